/* proto internals shared by its files. Not for other modules. */
#ifndef MQPKI_PROTO_INT_H
#define MQPKI_PROTO_INT_H

#include <stddef.h>

/* Writes the reason into why (when given) and returns -1: the CRL checks' refusal. */
int proto_refuse(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
