#!/bin/sh
# CGI on L1's web server: send N pings to L2's address (or ip=, e.g. one on a VLAN of tap0), but to the
# MAC given (ARP pinned), so L2 can count whether frames to that MAC reach it.
# QUERY_STRING: mac=XX:XX:XX:XX:XX:XX&n=N[&ip=A.B.C.D]
mac=$(echo "$QUERY_STRING" | sed -n 's/.*mac=\([0-9a-fA-F:]*\).*/\1/p')
n=$(echo "$QUERY_STRING" | sed -n 's/.*n=\([0-9]*\).*/\1/p')
ip=$(echo "$QUERY_STRING" | sed -n 's/.*ip=\([0-9.]*\).*/\1/p')
ip=${ip:-10.0.2.2}
arp -s "$ip" "$mac"
ping -c "${n:-10}" -i 0.05 -W 1 "$ip" >/dev/null 2>&1
arp -d "$ip"
printf 'Content-Type: text/plain\r\n\r\nsent %s to %s\n' "$n" "$mac"
