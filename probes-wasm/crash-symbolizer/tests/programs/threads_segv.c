#include <pthread.h>
#include <stdint.h>
#include <unistd.h>
static void *idle(void *a) { (void)a; for (;;) pause(); return 0; }
__attribute__((noinline)) static void level3(int *p) { *p = 42; }
__attribute__((noinline)) static void level2(int *p) { level3(p); __asm__ volatile(""); }
int main(int argc, char **argv) {
  (void)argv;
  pthread_t t1, t2;
  pthread_create(&t1, 0, idle, 0);
  pthread_create(&t2, 0, idle, 0);
  usleep(100000);
  level2((int *)(uintptr_t)(argc - 1)); /* NULL, unknown to the compiler */
  return 0;
}
