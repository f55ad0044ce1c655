#include <string.h>

#include "util.h"

unsigned long fib(unsigned n) {
    unsigned long a = 0, b = 1;
    while (n-- > 0) {
        unsigned long t = a + b;
        a = b;
        b = t;
    }
    return a;
}

char *reverse(char *s) {
    size_t len = strlen(s);
    for (size_t i = 0; i < len / 2; i++) {
        char t = s[i];
        s[i] = s[len - 1 - i];
        s[len - 1 - i] = t;
    }
    return s;
}
