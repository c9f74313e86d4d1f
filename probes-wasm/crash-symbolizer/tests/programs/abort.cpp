// A C++ program aborting from a nested call: an exception nobody catches,
// thrown three calls deep inside a namespace and a class.
#include <stdexcept>
namespace shop {
struct Basket {
  int items = 0;
  __attribute__((noinline)) void checkout(int n) {
    if (n > items) throw std::runtime_error("empty basket");
  }
};
volatile int paid;
__attribute__((noinline)) void pay(Basket &b) { b.checkout(3); paid = 1; }
}  // namespace shop
int main() {
  shop::Basket b;
  shop::pay(b);
  return 0;
}
