/*
 * tty.c: the terminal the progress display is drawn on.
 */
#include "internal.h"

#include <unistd.h>

/* Whether this process's group has terminal fd in the foreground: a job put in the
 * background (Ctrl-Z then bg, or started with &) draws nothing over the shell's prompt,
 * as scp's progress meter (can_output).  1 where fd is no terminal: nothing to share. */
ESCP_API int escp_tty_foreground(int fd) {
  pid_t owner = tcgetpgrp(fd);
  return owner < 0 || owner == getpgrp();
}
