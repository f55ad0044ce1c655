#include <stdio.h>

#include "util.h"

int main(void) {
    char word[] = "ccache";
    printf("fib(40) = %lu\n", fib(40));
    printf("reverse = %s\n", reverse(word));
    return 0;
}
