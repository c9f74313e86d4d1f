/* A crash inside a signal handler: main -> outer -> inner raises SIGUSR1,
 * whose handler writes through NULL. */
#include <signal.h>
#include <string.h>
volatile int after;
volatile int *target;
__attribute__((noinline)) static void on_usr1(int sig) {
  (void)sig;
  *target = 7;
}
__attribute__((noinline)) static void inner(void) { raise(SIGUSR1); after++; }
__attribute__((noinline)) static void outer(void) { inner(); after++; }
int main(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sigaction(SIGUSR1, &sa, 0);
  outer();
  return 0;
}
