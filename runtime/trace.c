#include "trace.h"

#include "common.h"

#include <string.h>

int trace_open(trace_t *t, const char *path, int pid, const char *process_name) {
    memset(t, 0, sizeof *t);
    if (!path) return 0;
    t->f = fopen(path, "w");
    if (!t->f) return mimic_err(MIMIC_EIO, "%s: cannot write trace", path);
    t->pid = pid;
    /* CLOCK_MONOTONIC is shared by every process of a machine: traces of a local
     * cluster's processes line up when opened together in Perfetto */
    t->t0 = 0.0;
    fprintf(t->f, "[{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,\"args\":{\"name\":\"%s\"}}",
            pid, process_name);
    return 0;
}

void trace_event(trace_t *t, const char *name, double start, double end) {
    if (!t || !t->f) return;
    fprintf(t->f, ",\n{\"name\":\"%s\",\"ph\":\"X\",\"pid\":%d,\"tid\":0,\"ts\":%.1f,\"dur\":%.1f}",
            name, t->pid, (start - t->t0) * 1e6, (end - start) * 1e6);
    t->events++;
}

void trace_close(trace_t *t) {
    if (!t || !t->f) return;
    fputs("]\n", t->f);
    fclose(t->f);
    t->f = NULL;
}
