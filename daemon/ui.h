/* daemon/ui.c: the read-only dashboard under /ui/ (docs/dashboard.md). */
#ifndef MQPKI_UI_H
#define MQPKI_UI_H

#include <stddef.h>

#include "daemon.h"

/* What http.c hands over: the path, the credentials and the query arguments it looked up. */
struct ui_request {
    const char *url;
    const char *authorization;        /* Authorization header, or NULL */
    const char *session_cookie;       /* the mqpki_session cookie, or NULL */
    const unsigned char *client_cert; /* TLS client certificate (DER), or NULL */
    size_t client_cert_len;
    const char *arg_q, *arg_state, *arg_after, *arg_id, *arg_t, *arg_next;
};

/* The answer: status, body (heap, http.c hands it to libmicrohttpd), headers to add. */
struct ui_response {
    int status;
    const char *content_type;
    char *body;
    size_t len;
    char *set_cookie;   /* heap, or NULL */
    char location[256]; /* "" when none */
    int www_authenticate;
};

/* 1 for /ui and everything under /ui/. */
int ui_handles(const char *url);

/* Answers one GET of the dashboard; inv is the server thread's store connection (NULL: 503). */
void ui_handle(struct daemon_ctx *ctx, struct inventory *inv, const struct ui_request *rq,
               struct ui_response *out);

#endif
