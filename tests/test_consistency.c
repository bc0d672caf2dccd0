// TIMEOUT: 30
/* test_consistency — the server's BSP/ASP/SSP rules on their own (pserver/consistency.h),
 * with no process and no socket: which pushes are accepted and what they do, when the
 * BSP step is due, when a pull is answered, and what a MEMBERSHIP changes — before the
 * first MEMBERSHIP (the cluster.workers quorum) and after it. */
#include "testutil.h"

#include "common.h"
#include "consistency.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static cons_t *make(cons_mode_t mode, int staleness, int quorum) {
    cons_t *c = NULL;
    T_CHECK(cons_new(&c, mode, staleness, quorum) == 0 && c != NULL);
    return c;
}

static void set_live(cons_t *c, int64_t epoch, const int32_t *ids, size_t n) {
    T_CHECK(!cons_membership_outdated(c, epoch));
    T_CHECK(cons_membership(c, epoch, ids, n) == 0);
    T_CHECK(cons_epoch(c) == epoch);
}

/* BSP before the first MEMBERSHIP: a step waits for the quorum of distinct workers. */
static void test_bsp_quorum(void) {
    cons_t *c = make(CONS_BSP, 0, 2);
    T_CHECK(!cons_step_due(c, 0)); /* nobody pushed */
    T_CHECK(cons_push(c, 10, 0, 0) == CONS_SUM);
    T_CHECK(!cons_step_due(c, 0)); /* 1 of 2 */
    T_CHECK(cons_push(c, 10, 0, 0) == CONS_DUPLICATE);
    T_CHECK(!cons_step_due(c, 0)); /* a duplicate does not count twice */
    T_CHECK(cons_push(c, 11, 1, 0) == CONS_STALE);
    T_CHECK(!cons_step_due(c, 0)); /* nor does a refused push */
    T_CHECK(!cons_pull_ready(c, 1, 0));
    T_CHECK(cons_pull_ready(c, 0, 0));
    T_CHECK(cons_push(c, 11, 0, 0) == CONS_SUM);
    T_CHECK(cons_step_due(c, 0));
    /* the step made version 1: the marks are for 0, so nothing is due */
    T_CHECK(!cons_step_due(c, 1));
    T_CHECK(cons_pull_ready(c, 1, 1));
    T_CHECK(cons_push(c, 11, 0, 1) == CONS_STALE);
    T_CHECK(cons_push(c, 11, 1, 1) == CONS_SUM);
    T_CHECK(!cons_step_due(c, 1)); /* worker 10 is known now: it counts */
    T_CHECK(cons_push(c, 10, 1, 1) == CONS_SUM);
    T_CHECK(cons_step_due(c, 1));
    T_CHECK(cons_epoch(c) == 0);
    cons_destroy(&c);
    T_CHECK(c == NULL);
    cons_destroy(&c); /* a no-op */
}

/* BSP after MEMBERSHIP: only live workers count; a shrink can complete a step. */
static void test_bsp_membership(void) {
    cons_t *c = make(CONS_BSP, 0, 3); /* the quorum no longer matters after MEMBERSHIP */
    const int32_t two[] = {10, 11}, one[] = {10}, with_neg[] = {-1, 10, 12};
    set_live(c, 1, two, 2);
    T_CHECK(cons_push(c, 12, 0, 0) == CONS_NOT_LIVE); /* unknown */
    T_CHECK(cons_push(c, 10, 0, 0) == CONS_SUM);
    T_CHECK(!cons_step_due(c, 0));
    set_live(c, 2, one, 1); /* 11 leaves: 10 already pushed */
    T_CHECK(cons_step_due(c, 0));
    T_CHECK(cons_push(c, 11, 1, 1) == CONS_NOT_LIVE); /* known but gone */
    /* a grow makes the step wait for the newcomer; negative ids are skipped */
    T_CHECK(cons_push(c, 10, 1, 1) == CONS_SUM);
    T_CHECK(cons_step_due(c, 1));
    set_live(c, 3, with_neg, 3);
    T_CHECK(!cons_step_due(c, 1));
    T_CHECK(cons_push(c, 12, 1, 1) == CONS_SUM);
    T_CHECK(cons_step_due(c, 1));
    /* an older MEMBERSHIP is outdated, the same epoch is not */
    T_CHECK(cons_membership_outdated(c, 2));
    T_CHECK(!cons_membership_outdated(c, 3));
    /* nobody live: the push of a worker that left still makes the step... */
    T_CHECK(cons_push(c, 12, 2, 2) == CONS_SUM);
    set_live(c, 4, NULL, 0);
    T_CHECK(cons_step_due(c, 2));
    /* ...but without any push there is nothing to step */
    T_CHECK(!cons_step_due(c, 3));
    T_CHECK(!cons_pull_ready(c, 4, 3));
    cons_destroy(&c);
}

/* The table holds CONS_WORKERS_MAX workers; a bigger live set is refused whole. */
static void test_table_full(void) {
    cons_t *c = make(CONS_BSP, 0, 1);
    size_t n = CONS_WORKERS_MAX + 1;
    int32_t *ids = malloc(n * sizeof *ids);
    T_CHECK(ids != NULL);
    if (!ids) return;
    for (size_t i = 0; i < n; i++)
        ids[i] = (int32_t)i;
    set_live(c, 1, ids, 1);
    T_CHECK(cons_membership(c, 2, ids, n) == MIMIC_ENOMEM);
    T_CHECK(cons_epoch(c) == 1);
    T_CHECK(cons_push(c, 0, 0, 0) == CONS_SUM); /* worker 0 is still the live set */
    T_CHECK(cons_step_due(c, 0));
    T_CHECK(cons_push(c, 5, 0, 0) == CONS_NOT_LIVE);
    free(ids);
    cons_destroy(&c);
}

/* ASP: every push is applied at once, a stale one too; only the future is refused. */
static void test_asp(void) {
    cons_t *c = make(CONS_ASP, 0, 2);
    const int32_t one[] = {10};
    T_CHECK(cons_push(c, 10, 0, 0) == CONS_APPLY);
    T_CHECK(cons_push(c, 10, 0, 1) == CONS_APPLY); /* computed on 0, server at 1 */
    T_CHECK(cons_push(c, 11, 3, 2) == CONS_AHEAD);
    T_CHECK(!cons_step_due(c, 2)); /* steps are never due: each push is one */
    T_CHECK(cons_pull_ready(c, 2, 2));
    T_CHECK(!cons_pull_ready(c, 3, 2));
    set_live(c, 1, one, 1);
    T_CHECK(cons_push(c, 11, 2, 2) == CONS_NOT_LIVE);
    T_CHECK(cons_push(c, 10, 2, 2) == CONS_APPLY);
    cons_destroy(&c);
}

/* SSP(1): a pull of clock c waits until the slowest counted clock + 1 >= c. */
static void test_ssp(void) {
    cons_t *c = make(CONS_SSP, 1, 2);
    T_CHECK(cons_min_clock(c) == 0); /* no worker yet, quorum 2 */
    T_CHECK(cons_pull_ready(c, 1, 0));
    T_CHECK(!cons_pull_ready(c, 2, 0));
    T_CHECK(cons_push(c, 10, 0, 0) == CONS_APPLY);
    T_CHECK(cons_push(c, 10, 1, 1) == CONS_APPLY);
    T_CHECK(cons_push(c, 10, 3, 2) == CONS_AHEAD); /* not counted */
    /* worker 10's clock is 2, but only 1 of 2 workers was heard of */
    T_CHECK(cons_min_clock(c) == 0);
    T_CHECK(!cons_pull_ready(c, 2, 2)); /* the version does not matter in SSP */
    T_CHECK(cons_push(c, 11, 0, 2) == CONS_APPLY);
    T_CHECK(cons_min_clock(c) == 1);
    T_CHECK(cons_pull_ready(c, 2, 3));
    T_CHECK(!cons_pull_ready(c, 3, 3));
    T_CHECK(!cons_step_due(c, 3));

    /* a joining worker starts at the slowest clock: it does not hold pulls back */
    const int32_t three[] = {10, 11, 12}, fast[] = {10}, slow[] = {11};
    set_live(c, 1, three, 3);
    T_CHECK(cons_min_clock(c) == 1);
    T_CHECK(cons_pull_ready(c, 2, 3));
    T_CHECK(cons_push(c, 11, 3, 3) == CONS_APPLY); /* 11: 2, 12 is still at 1 */
    T_CHECK(cons_min_clock(c) == 1);
    T_CHECK(cons_push(c, 12, 4, 4) == CONS_APPLY);
    T_CHECK(cons_min_clock(c) == 2);
    T_CHECK(cons_pull_ready(c, 3, 5));
    T_CHECK(!cons_pull_ready(c, 4, 5));
    /* the slowest leaving releases pulls; a rejoining worker keeps its clock */
    T_CHECK(cons_push(c, 10, 5, 5) == CONS_APPLY); /* 10: 3 */
    set_live(c, 2, fast, 1);
    T_CHECK(cons_min_clock(c) == 3);
    T_CHECK(cons_pull_ready(c, 4, 6));
    set_live(c, 3, slow, 1);
    T_CHECK(cons_min_clock(c) == 2);
    /* nobody live: no clock holds a pull */
    set_live(c, 4, NULL, 0);
    T_CHECK(cons_min_clock(c) == UINT64_MAX);
    T_CHECK(cons_pull_ready(c, 1000, 6));
    cons_destroy(&c);
}

static void test_bad_settings(void) {
    cons_t *c = (cons_t *)&c; /* cons_new must set it to NULL on failure */
    T_CHECK(cons_new(&c, CONS_SSP, -1, 2) == MIMIC_EINVAL);
    T_CHECK(c == NULL);
    T_CHECK(strstr(mimic_last_error(), "cluster.staleness") != NULL);
}

int main(void) {
    mimic_set_quiet(1);
    test_bsp_quorum();
    test_bsp_membership();
    test_table_full();
    test_asp();
    test_ssp();
    test_bad_settings();
    return testutil_summary("test_consistency");
}
