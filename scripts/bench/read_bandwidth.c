/* Streaming read bandwidth of a 540 MB buffer (the f32 weights of the default model).
 * Build: gcc -O3 -mavx2 -fopenmp read_bandwidth.c -o read_bandwidth; run with
 * OMP_NUM_THREADS=1 and 2. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <immintrin.h>
#include <omp.h>
int main(){ size_t n=135000000; float*a=aligned_alloc(64,n*4); for(size_t i=0;i<n;i++)a[i]=1.0f;
 for(int rep=0;rep<5;rep++){ struct timespec t0,t1; clock_gettime(CLOCK_MONOTONIC,&t0);
 float tot=0;
 #pragma omp parallel for reduction(+:tot)
 for(size_t c=0;c<n/1024;c++){ __m256 s0=_mm256_setzero_ps(),s1=s0,s2=s0,s3=s0; for(size_t i=c*1024;i<c*1024+1024;i+=32){s0=_mm256_add_ps(s0,_mm256_load_ps(a+i));s1=_mm256_add_ps(s1,_mm256_load_ps(a+i+8));s2=_mm256_add_ps(s2,_mm256_load_ps(a+i+16));s3=_mm256_add_ps(s3,_mm256_load_ps(a+i+24));} s0=_mm256_add_ps(_mm256_add_ps(s0,s1),_mm256_add_ps(s2,s3)); float b[8]; _mm256_storeu_ps(b,s0); for(int j=0;j<8;j++)tot+=b[j];}
 clock_gettime(CLOCK_MONOTONIC,&t1); double s=(t1.tv_sec-t0.tv_sec)+(t1.tv_nsec-t0.tv_nsec)*1e-9; printf("%d threads: %.2f GB/s (%f)\n",omp_get_max_threads(),n*4/s/1e9,tot);}
}
