#include <iostream>

#include "src/greet.h"

int main() {
  std::cout << Greet("bazel-cache") << "\n" << SumTo(100) << "\n";
  return 0;
}
