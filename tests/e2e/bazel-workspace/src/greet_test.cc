#include <iostream>

#include "src/greet.h"

int main() {
  if (Greet("x") != "Hello, x!") {
    std::cerr << "Greet failed\n";
    return 1;
  }
  if (SumTo(100) != 5050) {
    std::cerr << "SumTo failed\n";
    return 1;
  }
  return 0;
}
