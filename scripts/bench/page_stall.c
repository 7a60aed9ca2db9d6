/* Stalls on the first access to a 2 MiB page, as `sparq bench attention` meets them.
 * A 64 MiB buffer on 2 MiB pages; per round, after a pause (reading 1,000 MiB, or
 * sleeping 100 ms after flushing the buffer from the caches), one load from each of its
 * 32 huge pages ("first"), then one load from another 4 KiB page of each ("second").
 * Both loads miss the caches; a stall is a load over 20 us. On a machine without the
 * host's interference both columns count zero.
 * Build: gcc -O2 page_stall.c -o page_stall; run: ./page_stall [rounds] */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec * 1e-3;
}

static double timed_load(volatile char *p) {
  double t0 = now_us();
  (void)*p;
  _mm_mfence();
  return now_us() - t0;
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 20;
  size_t huge = 2u << 20, pages = 32, bytes = pages * huge, big = 1000u << 20;
  char *buf;
  if (posix_memalign((void **)&buf, huge, bytes)) return 1;
  madvise(buf, bytes, MADV_HUGEPAGE);
  memset(buf, 1, bytes);
  char *scrub = malloc(big);
  memset(scrub, 1, big);
  for (int pause = 0; pause < 2; pause++) {
    int stalls[2] = {0, 0};
    double worst[2] = {0, 0}, typical = 0, stalled = 0;
    for (int r = 0; r < rounds; r++) {
      for (size_t i = 0; i < bytes; i += 64) _mm_clflush(buf + i);
      _mm_mfence();
      if (pause == 0) {
        volatile long s = 0;
        for (size_t i = 0; i < big; i += 64) s += scrub[i];
      } else {
        usleep(100000);
      }
      for (int which = 0; which < 2; which++) {
        for (size_t p = 0; p < pages; p++) {
          double t = timed_load(buf + p * huge + (which ? 4096 * 17 + 64 * 3 : 4096 * 5));
          if (t > 20) stalls[which]++;
          if (which == 0 && t > 20) stalled += t;
          if (t > worst[which]) worst[which] = t;
          if (which == 1 && t <= 20) typical += t;
        }
      }
    }
    int n = rounds * (int)pages;
    printf("after %-18s first load of a 2 MiB page: %4d of %d stalled (mean %.0f us, worst %.0f); "
           "second 4 KiB page: %4d stalled (worst %.0f us); a load otherwise %.2f us\n",
           pause ? "100 ms asleep:" : "a 1,000 MiB read:", stalls[0], n,
           stalls[0] ? stalled / stalls[0] : 0, worst[0],
           stalls[1], worst[1], typical / (n - stalls[1]));
  }
  return 0;
}
