/* test_main.c -- the runner behind tests/test.h. */
#include "test.h"

#include <signal.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_TESTS 512

static struct {
    const char *name;
    rsl_test_fn fn;
} tests[MAX_TESTS];
static int ntests;
static char tmpdir[256];

void rsl_test_register(const char *name, rsl_test_fn fn) {
    if (ntests < MAX_TESTS) {
        tests[ntests].name = name;
        tests[ntests].fn = fn;
        ntests++;
    }
}

void rsl_test_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "%s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    exit(1);
}

const char *rsl_test_tmpdir(void) {
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof(tmpdir), "/tmp/rsl-test-XXXXXX");
        if (!mkdtemp(tmpdir)) {
            rsl_test_fail(__FILE__, __LINE__, "mkdtemp failed");
        }
    }
    return tmpdir;
}

int rsl_test_write(const char *dir, const char *name, const char *text) {
    char path[1024];
    mkdir(dir, 0700);
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        rsl_test_fail(__FILE__, __LINE__, "cannot write %s", path);
    }
    fputs(text, f);
    fclose(f);
    return 0;
}

static void rm_tmpdir(void) {
    if (tmpdir[0]) {
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0) {
            fprintf(stderr, "could not remove %s\n", tmpdir);
        }
        tmpdir[0] = 0;
    }
}

static int run_forked(int i, int timeout) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        alarm((unsigned)timeout);
        tests[i].fn();
        rm_tmpdir();
        exit(0); /* exit(), not _exit(): LeakSanitizer checks at exit */
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
    }
    kill(-pid, SIGKILL); /* anything the test started and left behind */
    if (WIFSIGNALED(st)) {
        fprintf(stderr, "  %s: killed by signal %d%s\n", tests[i].name, WTERMSIG(st),
                WTERMSIG(st) == SIGALRM ? " (timeout)" : "");
        return 1;
    }
    return WEXITSTATUS(st) != 0;
}

int main(int argc, char **argv) {
    int timeout = 60, passed = 0, failed = 0;
    const char *t = getenv("RSL_TEST_TIMEOUT");
    if (t && atoi(t) > 0) {
        timeout = atoi(t);
    }
    signal(SIGPIPE, SIG_IGN);
    if (argc > 1) {
        for (int a = 1; a < argc; a++) {
            int found = 0;
            for (int i = 0; i < ntests; i++) {
                if (strcmp(tests[i].name, argv[a]) == 0) {
                    found = 1;
                    tests[i].fn();
                    rm_tmpdir();
                    printf("ok %s\n", tests[i].name);
                    passed++;
                }
            }
            if (!found) {
                fprintf(stderr, "no test named %s\n", argv[a]);
                failed++;
            }
        }
    } else {
        for (int i = 0; i < ntests; i++) {
            int r = run_forked(i, timeout);
            printf("%s %d - %s\n", r ? "not ok" : "ok", i + 1, tests[i].name);
            if (r) {
                failed++;
            } else {
                passed++;
            }
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
