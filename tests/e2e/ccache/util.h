#ifndef BAZEL_CACHE_E2E_UTIL_H
#define BAZEL_CACHE_E2E_UTIL_H

/* Returns the n-th Fibonacci number (fib(0) == 0). */
unsigned long fib(unsigned n);

/* Reverses the NUL-terminated string s in place and returns it. */
char *reverse(char *s);

#endif
