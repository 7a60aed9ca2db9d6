/* Peak single-precision FMA rate with AVX-512: twelve independent accumulator chains
 * per thread. Build: gcc -O3 -mavx512f -mfma -fopenmp fma_peak.c -o fma_peak; run with
 * OMP_NUM_THREADS=1 and 2. */
#include <stdio.h>
#include <time.h>
#include <immintrin.h>
#include <omp.h>
int main(){ double t0=omp_get_wtime(); long iters=200000000; float tot=0;
#pragma omp parallel reduction(+:tot)
{ __m512 a[12]; for(int i=0;i<12;i++)a[i]=_mm512_set1_ps(i*0.001f); __m512 m=_mm512_set1_ps(0.9999f), c=_mm512_set1_ps(0.0001f);
  for(long it=0;it<iters;it++){ for(int i=0;i<12;i++) a[i]=_mm512_fmadd_ps(a[i],m,c);} 
  for(int i=0;i<12;i++) tot+=_mm512_reduce_add_ps(a[i]); }
 double t=omp_get_wtime()-t0; printf("%d threads: %.1f GFLOP/s (%f)\n", omp_get_max_threads(), omp_get_max_threads()*iters*12.0*32/t/1e9, tot);}
