#define _POSIX_C_SOURCE 200809L
#include "stopsig.h"

#include <string.h>

static volatile sig_atomic_t stop_flag;

static void on_stop_signal(int sig) {
    stop_flag = sig;
}

void mimic_catch_stop_signals(int restart) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = restart ? SA_RESTART : 0;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
}

void mimic_catch_preempt_signal(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
}

volatile sig_atomic_t *mimic_stop_flag(void) {
    return &stop_flag;
}
