#include <iostream>

#include "greeting.h"

int main() {
  std::cout << greeting("bazel-cache") << std::endl;
  return 0;
}
