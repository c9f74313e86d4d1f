/* Recursion deeper than the 64-frame limit, then a NULL write. */
#include <stdio.h>
__attribute__((noinline)) static void touch(volatile char *b) { b[0]++; }
__attribute__((noinline)) static int descend(int n) {
  volatile char buf[16];
  buf[0] = (char)n;
  touch(buf);
  if (n == 0) {
    *(volatile int *)0 = 1;
    return 0;
  }
  int r = descend(n - 1);
  return r + buf[0];
}
int main(void) { return descend(100); }
