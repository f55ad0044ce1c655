#ifndef BAZEL_CACHE_E2E_GREET_H_
#define BAZEL_CACHE_E2E_GREET_H_

#include <string>

// Returns "Hello, <name>!".
std::string Greet(const std::string& name);

// Sum of 1..n, computed in a loop.
long SumTo(long n);

#endif  // BAZEL_CACHE_E2E_GREET_H_
