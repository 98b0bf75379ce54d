/* Appends "HOSTNAME NANOSECONDS" (the realtime clock) to the file named by
 * its argument every 20 ms, forever: a container's record of when it ran,
 * for tests that check two copies never overlap. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: stamp FILE\n");
        return 2;
    }
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    for (;;) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        char line[320];
        int n = snprintf(line, sizeof line, "%s %lld%09ld\n", host, (long long)now.tv_sec, now.tv_nsec);
        int fd = open(argv[1], O_WRONLY | O_APPEND | O_CREAT, 0644);
        if (fd >= 0) {
            if (write(fd, line, (size_t)n) != n) {
                perror("write");
            }
            close(fd);
        }
        struct timespec pause = {0, 20 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}
