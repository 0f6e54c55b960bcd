/*
 * pipeline.c: one helper thread per stream direction that does the disk half of a
 * loop, so that a stream's pread/pwrite overlaps its crypto and socket I/O.  With
 * O_DIRECT every request waits for the device; without this a stream is either on
 * the disk or on the wire, never both.
 *
 * A bounded FIFO of ESCP_PIPE_DEPTH jobs, filled and harvested by the one thread that
 * owns the stream direction and run in order by the helper:
 *
 *   escp_job *j = escp__pipe_next(p);   // room is guaranteed by the caller (pending < depth)
 *   j->run = ...; j->buf = ...;         // fill
 *   escp__pipe_submit(p);               // the helper runs it
 *   ...
 *   j = escp__pipe_harvest(p, 1);       // oldest job, after it ran (waits), or NULL if none
 *
 * The helper only ever touches a job between submit and completion, and the owner
 * only before submit and after harvest, so job contents need no lock.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

static void *pipe_main(void *arg) {
  escp_pipe *p = arg;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (!p->stop && p->completed == p->submitted) pthread_cond_wait(&p->work, &p->mu);
    if (p->completed == p->submitted) break; /* stopping, and nothing left to run */
    escp_job *j = &p->jobs[p->completed % ESCP_PIPE_DEPTH];
    pthread_mutex_unlock(&p->mu);
    j->result = j->run ? j->run(j) : 0;
    pthread_mutex_lock(&p->mu);
    p->completed++;
    if (p->waiting) pthread_cond_signal(&p->done);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

int escp__pipe_start(escp_pipe *p) {
  if (p->started) return 0; /* once per direction: later calls are free */
  memset(p, 0, sizeof *p);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->work, NULL);
  pthread_cond_init(&p->done, NULL);
  /* The helper inherits the owner's CPU affinity and memory policy (affinity.c). */
  int rc = pthread_create(&p->thread, NULL, pipe_main, p);
  if (rc) {
    pthread_cond_destroy(&p->done);
    pthread_cond_destroy(&p->work);
    pthread_mutex_destroy(&p->mu);
    return escp__err(-rc, "cannot start a disk I/O thread: %s", strerror(rc));
  }
  p->started = 1;
  return 0;
}

escp_job *escp__pipe_next(escp_pipe *p) {
  return &p->jobs[p->submitted % ESCP_PIPE_DEPTH];
}

uint32_t escp__pipe_pending(const escp_pipe *p) {
  return (uint32_t)(p->submitted - p->harvested);
}

void escp__pipe_submit(escp_pipe *p) {
  pthread_mutex_lock(&p->mu);
  p->submitted++;
  pthread_cond_signal(&p->work);
  pthread_mutex_unlock(&p->mu);
}

escp_job *escp__pipe_harvest(escp_pipe *p, int wait) {
  if (p->harvested == p->submitted) return NULL;
  pthread_mutex_lock(&p->mu);
  while (wait && p->completed == p->harvested) {
    p->waiting = 1;
    pthread_cond_wait(&p->done, &p->mu);
    p->waiting = 0;
  }
  escp_job *j = p->completed > p->harvested ? &p->jobs[p->harvested++ % ESCP_PIPE_DEPTH] : NULL;
  pthread_mutex_unlock(&p->mu);
  return j;
}

void escp__pipe_stop(escp_pipe *p) {
  if (!p->started) return;
  pthread_mutex_lock(&p->mu);
  p->stop = 1;
  pthread_cond_signal(&p->work);
  pthread_mutex_unlock(&p->mu);
  pthread_join(p->thread, NULL);
  pthread_cond_destroy(&p->done);
  pthread_cond_destroy(&p->work);
  pthread_mutex_destroy(&p->mu);
  p->started = 0;
}
