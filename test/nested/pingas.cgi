#!/bin/sh
# CGI on L1's web server: send N pings to L2's address, but to the MAC given (ARP pinned), so L2 can
# count whether frames to that MAC reach it. QUERY_STRING: mac=XX:XX:XX:XX:XX:XX&n=N
mac=$(echo "$QUERY_STRING" | sed -n 's/.*mac=\([0-9a-fA-F:]*\).*/\1/p')
n=$(echo "$QUERY_STRING" | sed -n 's/.*n=\([0-9]*\).*/\1/p')
arp -s 10.0.2.2 "$mac"
ping -c "${n:-10}" -i 0.05 -W 1 10.0.2.2 >/dev/null 2>&1
arp -d 10.0.2.2
printf 'Content-Type: text/plain\r\n\r\nsent %s to %s\n' "$n" "$mac"
