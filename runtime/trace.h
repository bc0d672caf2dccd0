/* trace — Chrome trace-event JSON (viewable in Perfetto or chrome://tracing).
 *
 * One trace_t per process writes complete events ("ph":"X") with start and duration
 * in microseconds; trace_close ends the JSON array. A NULL or closed trace ignores
 * events, so callers record unconditionally and the config decides. */
#ifndef MIMIC_TRACE_H
#define MIMIC_TRACE_H

#include <stdio.h>

typedef struct {
    FILE *f;
    int pid, events;
    double t0;
} trace_t;

/* path NULL: a disabled trace. pid labels the process row (e.g. worker rank). */
int trace_open(trace_t *t, const char *path, int pid, const char *process_name);
/* An event named `name` that ran from start to end (mimic_now() seconds). */
void trace_event(trace_t *t, const char *name, double start, double end);
void trace_close(trace_t *t);

#endif
