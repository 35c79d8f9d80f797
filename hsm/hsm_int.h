/*
 * hsm internals shared by token.c (the CA token on top of p11/) and pin.c. Not for use outside
 * hsm/.
 */
#ifndef MQPKI_HSM_INT_H
#define MQPKI_HSM_INT_H

#include "hsm.h"
#include "p11.h"

_Static_assert(HSM_PIN_MAX == P11_PIN_MAX, "hsm and p11 PIN buffers must agree");

struct hsm {
    struct p11_token *tok;
};

#endif
