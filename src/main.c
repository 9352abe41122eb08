/* main.c -- the `resilua` command (placeholder until the CLI lands). */
#include "resilua.h"
#include <stdio.h>

int main(void) {
    fprintf(stderr, "resilua: not built yet\n");
    return 2;
}
