#include "src/greet.h"

std::string Greet(const std::string& name) { return "Hello, " + name + "!"; }

long SumTo(long n) {
  long total = 0;
  for (long i = 1; i <= n; ++i) total += i;
  return total;
}
