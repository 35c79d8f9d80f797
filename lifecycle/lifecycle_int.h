/* lifecycle internals shared by its files. Not for other modules. */
#ifndef MQPKI_LIFECYCLE_INT_H
#define MQPKI_LIFECYCLE_INT_H

#include "lifecycle.h"

/* A delta CRL with more entries than this is published as a full CRL instead. */
#define LIFECYCLE_DELTA_MAX_DEFAULT 10000

struct lifecycle {
    struct inventory *inv; /* borrowed */
    struct lifecycle_config cfg;
};

#endif
