/* Peak single-precision FMA rate: twelve independent accumulator chains per thread,
 * in the widest vectors the build targets (AVX-512 or AVX2). Build on the machine it
 * measures: gcc -O3 -march=native -fopenmp fma_peak.c -o fma_peak; run with
 * OMP_NUM_THREADS=1 and 2. */
#include <stdio.h>
#include <time.h>
#include <immintrin.h>
#include <omp.h>
#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
static float hsum(vec v){ return _mm512_reduce_add_ps(v); }
#else
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
static float hsum(vec v){ float b[8]; _mm256_storeu_ps(b,v); float s=0; for(int i=0;i<8;i++) s+=b[i]; return s; }
#endif
int main(){ double t0=omp_get_wtime(); long iters=200000000; float tot=0;
#pragma omp parallel reduction(+:tot)
{ vec a[12]; for(int i=0;i<12;i++)a[i]=SET1(i*0.001f); vec m=SET1(0.9999f), c=SET1(0.0001f);
  for(long it=0;it<iters;it++){ for(int i=0;i<12;i++) a[i]=FMA(a[i],m,c);}
  for(int i=0;i<12;i++) tot+=hsum(a[i]); }
 double t=omp_get_wtime()-t0;
 printf("%d threads, %d lanes: %.1f GFLOP/s (%f)\n", omp_get_max_threads(), LANES,
        omp_get_max_threads()*iters*12.0*2*LANES/t/1e9, tot);}
