/*
 * lifecycle/committer.c: group commit of issuances. Server threads sign in parallel and hand their
 * records to one committer thread, which writes every record waiting at that moment in one
 * transaction (a savepoint each, so one refusal does not undo the others) and one durable commit. A
 * thread gets its answer only after the commit: the certificate is on disk before anyone sees it.
 * Under load many issuances share one fsync; alone, a request waits for exactly one commit.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "inventory.h"
#include "lifecycle_int.h"

#define BATCH_MAX 512

struct job {
    const struct inventory_cert *rec;
    const struct lifecycle_auth *auth;
    int rc;
    int done;
    char detail[300];
    struct job *next;
};

struct lifecycle_committer {
    struct inventory *inv;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t work; /* jobs queued or stopping */
    pthread_cond_t done; /* a batch was committed */
    struct job *head, *tail;
    int stopping;
};

static void finish(struct job *j, int rc)
{
    j->rc = rc;
    if (rc != MQPKI_OK)
        snprintf(j->detail, sizeof(j->detail), "%s", mqpki_err_detail(rc));
}

static void commit_batch(struct lifecycle_committer *cm, struct job *batch)
{
    int rc;

    mqpki_err_clear();
    if ((rc = inventory_begin(cm->inv)) != MQPKI_OK) {
        for (struct job *j = batch; j != NULL; j = j->next)
            finish(j, rc);
        return;
    }
    for (struct job *j = batch; j != NULL; j = j->next) {
        int src;
        mqpki_err_clear();
        if ((src = inventory_savepoint(cm->inv)) == MQPKI_OK) {
            rc = lifecycle_record(cm->inv, j->rec, j->auth);
            /* A refused token keeps its failure count (attempt limits); anything else that
             * failed is undone so that the token stays unspent. */
            src = inventory_savepoint_end(cm->inv, rc == MQPKI_OK || rc == MQPKI_ERR_AUTH);
        }
        if (src != MQPKI_OK) {
            /* The transaction itself is gone (I/O error, disk full): nothing of this batch
             * will be durable, and the clients should retry (503), not give up (403). */
            for (struct job *k = batch; k != NULL; k = k->next)
                finish(k, MQPKI_ERR_STORE);
            inventory_rollback(cm->inv);
            return;
        }
        finish(j, rc);
    }
    mqpki_err_clear();
    if ((rc = inventory_commit(cm->inv)) != MQPKI_OK) {
        /* Nothing of this batch is durable: every record fails, refusals included. */
        for (struct job *j = batch; j != NULL; j = j->next)
            if (j->rc == MQPKI_OK || j->rc == MQPKI_ERR_AUTH)
                finish(j, rc);
    }
}

static void *run(void *arg)
{
    struct lifecycle_committer *cm = arg;

    pthread_mutex_lock(&cm->lock);
    for (;;) {
        struct job *batch, *j;
        int n = 0;

        while (cm->head == NULL && !cm->stopping)
            pthread_cond_wait(&cm->work, &cm->lock);
        if (cm->head == NULL && cm->stopping)
            break;
        /* Take what is waiting now, up to BATCH_MAX. */
        batch = cm->head;
        for (j = batch; j->next != NULL && ++n < BATCH_MAX; j = j->next)
            ;
        cm->head = j->next;
        if (cm->head == NULL)
            cm->tail = NULL;
        j->next = NULL;
        pthread_mutex_unlock(&cm->lock);

        commit_batch(cm, batch);

        pthread_mutex_lock(&cm->lock);
        for (j = batch; j != NULL;) {
            struct job *next = j->next;
            j->done = 1; /* j belongs to its waiting thread again from here */
            j = next;
        }
        pthread_cond_broadcast(&cm->done);
    }
    pthread_mutex_unlock(&cm->lock);
    return NULL;
}

int lifecycle_committer_start(const char *db_path, struct lifecycle_committer **out)
{
    struct lifecycle_committer *cm;
    int rc;

    *out = NULL;
    if ((cm = calloc(1, sizeof(*cm))) == NULL)
        return MQPKI_ERR_NOMEM;
    pthread_mutex_init(&cm->lock, NULL);
    pthread_cond_init(&cm->work, NULL);
    pthread_cond_init(&cm->done, NULL);
    if ((rc = inventory_open(db_path, &cm->inv)) != MQPKI_OK ||
        (rc = inventory_group_writer(cm->inv)) != MQPKI_OK)
        goto out;
    if (pthread_create(&cm->thread, NULL, run, cm) != 0) {
        rc = mqpki_fail(MQPKI_ERR_INTERNAL, "cannot start the committer thread");
        goto out;
    }
    *out = cm;
    return MQPKI_OK;
out:
    inventory_close(cm->inv);
    pthread_cond_destroy(&cm->work);
    pthread_cond_destroy(&cm->done);
    pthread_mutex_destroy(&cm->lock);
    free(cm);
    return rc;
}

void lifecycle_committer_stop(struct lifecycle_committer *cm)
{
    if (cm == NULL)
        return;
    pthread_mutex_lock(&cm->lock);
    cm->stopping = 1;
    pthread_cond_signal(&cm->work);
    pthread_mutex_unlock(&cm->lock);
    pthread_join(cm->thread, NULL);
    inventory_close(cm->inv);
    pthread_cond_destroy(&cm->work);
    pthread_cond_destroy(&cm->done);
    pthread_mutex_destroy(&cm->lock);
    free(cm);
}

int lifecycle_committer_record(struct lifecycle_committer *cm, const struct inventory_cert *rec,
                               const struct lifecycle_auth *auth)
{
    struct job j;

    memset(&j, 0, sizeof(j));
    j.rec = rec;
    j.auth = auth;
    pthread_mutex_lock(&cm->lock);
    if (cm->stopping) {
        pthread_mutex_unlock(&cm->lock);
        return mqpki_fail(MQPKI_ERR_BUSY, "shutting down");
    }
    if (cm->tail != NULL)
        cm->tail->next = &j;
    else
        cm->head = &j;
    cm->tail = &j;
    pthread_cond_signal(&cm->work);
    while (!j.done)
        pthread_cond_wait(&cm->done, &cm->lock);
    pthread_mutex_unlock(&cm->lock);
    if (j.rc != MQPKI_OK)
        return mqpki_fail(j.rc, "%s", j.detail);
    return MQPKI_OK;
}
