/* The pod sandbox's process (containerd's sandbox_image), built here because no registry with
 * registry.k8s.io/pause is reachable from the test machines. It does what the upstream pause
 * does: hold the pod's namespaces, reap adopted zombies, exit on SIGINT/SIGTERM.
 *
 *   gcc -static -Os -o pause pause.c      (scripts/build-image.sh --pause)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signo) {
  (void)signo;
  _exit(0);
}

static void reap(int signo) {
  (void)signo;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "-v") == 0) {
    puts("dhcpmanager pause 1");
    return 0;
  }
  if (getpid() != 1) fprintf(stderr, "pause: not PID 1, zombies of other processes are not reaped\n");
  struct sigaction on_stop = {.sa_handler = stop};
  struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  if (sigaction(SIGINT, &on_stop, NULL) < 0 || sigaction(SIGTERM, &on_stop, NULL) < 0 ||
      sigaction(SIGCHLD, &on_child, NULL) < 0) {
    perror("pause: sigaction");
    return 1;
  }
  for (;;) pause();
}
