/* Prints the TSC rate (Hz), measured against CLOCK_MONOTONIC: the test guest reports TSC cycles, and
   under KVM its TSC runs at the host's rate. */
#include <stdint.h>
#include <stdio.h>
#include <time.h>
static uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}
int main(void) {
  double t0 = now();
  uint64_t c0 = rdtsc();
  while (now() - t0 < 0.3) {
  }
  printf("%.0f\n", (double)(rdtsc() - c0) / (now() - t0));
  return 0;
}
