#include "greeting.h"

std::string greeting(const std::string& who) {
  return "hello, " + who + ", from a nixpkgs toolchain";
}
