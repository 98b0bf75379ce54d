/* A UDP test payload for berth's network tests, built static so it runs in
 * a busybox image (busybox's nc has no UDP).
 *   udp-echo serve PORT        answer each datagram with "echo from HOSTNAME: DATA"
 *   udp-echo send ADDR PORT TEXT   send TEXT, print the answer (exit 1 after 2 s without one)
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    char buf[1024], out[1400], host[256] = "?";
    if (fd < 0) return perror("socket"), 2;
    if (argc == 3 && !strcmp(argv[1], "serve")) {
        addr.sin_port = htons(atoi(argv[2]));
        if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) return perror("bind"), 2;
        gethostname(host, sizeof host - 1);
        setvbuf(stdout, NULL, _IOLBF, 0);
        for (;;) {
            struct sockaddr_in from;
            socklen_t len = sizeof from;
            ssize_t n = recvfrom(fd, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &len);
            if (n < 0) continue;
            buf[n] = 0;
            int m = snprintf(out, sizeof out, "echo from %s: %s", host, buf);
            sendto(fd, out, m, 0, (struct sockaddr *)&from, len);
            printf("%s from %s\n", buf, inet_ntoa(from.sin_addr));
        }
    }
    if (argc == 5 && !strcmp(argv[1], "send")) {
        struct timeval wait = {.tv_sec = 2};
        addr.sin_port = htons(atoi(argv[3]));
        if (inet_pton(AF_INET, argv[2], &addr.sin_addr) != 1) return fprintf(stderr, "bad address\n"), 2;
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
        sendto(fd, argv[4], strlen(argv[4]), 0, (struct sockaddr *)&addr, sizeof addr);
        ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
        if (n < 0) return fprintf(stderr, "no answer\n"), 1;
        buf[n] = 0;
        printf("%s\n", buf);
        return 0;
    }
    fprintf(stderr, "usage: udp-echo serve PORT | udp-echo send ADDR PORT TEXT\n");
    return 2;
}
