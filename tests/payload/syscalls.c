/* A seccomp test payload for berth, built static so it runs in a busybox
 * image. It tries the calls Docker's default profile denies and prints one
 * line each: "NAME ok", or NAME and the errno (EPERM, EINVAL, ...).
 *
 * mount and reboot need capabilities a container lacks; a new user
 * namespace gives them, where unshare is allowed. So "mount ok" and
 * "reboot EINVAL" (only restart and power-off mean anything in a child PID
 * namespace) show that seccomp and the capability check both let the call
 * through, while EPERM shows that seccomp (or the capability) stopped it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define KEYCTL_JOIN_SESSION_KEYRING 1

static int result(long ret) { return ret < 0 ? errno : 0; }

static int try_unshare(void) { return result(unshare(CLONE_NEWUSER)); }

static int try_keyctl(void) { return result(syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, 0)); }

static int try_mount(void) {
    unshare(CLONE_NEWUSER | CLONE_NEWNS);
    return result(mount("none", "/tmp", "tmpfs", 0, NULL));
}

static int try_reboot(void) {
    if (unshare(CLONE_NEWUSER | CLONE_NEWPID) == 0) {
        pid_t child = fork();
        if (child == 0) _exit(result(reboot(RB_DISABLE_CAD)));
        int status = 0;
        waitpid(child, &status, 0);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 255;
    }
    return result(reboot(RB_DISABLE_CAD));
}

/* Each try runs in a child, so the namespaces it makes stay there. */
static void run(const char *name, int (*try)(void)) {
    pid_t child = fork();
    if (child < 0) {
        printf("%s fork-failed-%s\n", name, strerrorname_np(errno));
        return;
    }
    if (child == 0) _exit(try());
    int status = 0;
    waitpid(child, &status, 0);
    int err = WIFEXITED(status) ? WEXITSTATUS(status) : 255;
    printf("%s %s\n", name, err == 0 ? "ok" : err == 255 ? "killed" : strerrorname_np(err));
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    run("unshare", try_unshare);
    run("keyctl", try_keyctl);
    run("mount", try_mount);
    run("reboot", try_reboot);
    return 0;
}
