/* Random gathers of 4,096 rows of 256 bytes (a SparQ selection at 1/8 of S = 65,536,
 * d = 64) after reading 1,000 MiB to evict the caches. Usage: gather HUGE MODE, with
 * HUGE 0/1 (advise 2 MiB pages) and MODE 0 (no prefetch), 1 (16 rows ahead) or 2
 * (prefetch every row first). Build: gcc -O3 -mavx2 -mfma gather.c -o gather */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <immintrin.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
int main(int argc,char**argv){
  int huge=atoi(argv[1]), mode=atoi(argv[2]); size_t S=65536,d=64,k=4096;
  size_t bytes=S*d*4; float*K; posix_memalign((void**)&K,2<<20,bytes); if(huge) madvise(K,bytes,MADV_HUGEPAGE); for(size_t i=0;i<S*d;i++)K[i]=(i%13)*0.1f;
  size_t big=1000<<20; char*scr=malloc(big); memset(scr,1,big);
  unsigned*sel=malloc(k*4); float q[64]; for(int i=0;i<64;i++)q[i]=0.01f*i; float*out=malloc(k*4);
  srand(1); for(int rep=0;rep<6;rep++){
    // random sorted selection
    for(size_t j=0;j<k;j++) sel[j]=j*16+rand()%16;
    volatile long s=0; for(size_t i=0;i<big;i+=64) s+=scr[i];
    double t0=now();
    if(mode==2){ for(size_t j=0;j<k;j++){const char*r=(const char*)(K+sel[j]*d); for(int c=0;c<256;c+=64)_mm_prefetch(r+c,_MM_HINT_T0);} }
    for(size_t j=0;j<k;j++){
      if(mode==1 && j+16<k){const char*r=(const char*)(K+sel[j+16]*d); for(int c=0;c<256;c+=64)_mm_prefetch(r+c,_MM_HINT_T0);}
      const float*r=K+sel[j]*d; __m256 a=_mm256_setzero_ps(); for(int i=0;i<64;i+=8)a=_mm256_fmadd_ps(_mm256_load_ps(r+i),_mm256_loadu_ps(q+i),a);
      float b[8];_mm256_storeu_ps(b,a); out[j]=b[0]+b[1]+b[2]+b[3]+b[4]+b[5]+b[6]+b[7];}
    double t=now()-t0; printf("huge=%d mode=%d: %.0f us (%.0f ns/row)\n",huge,mode,t*1e6,t*1e9/k);
  }
}
