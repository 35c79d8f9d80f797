/* web: the dashboard's static files, embedded in mqpkid at build time (cmake/Embed.cmake). */
#ifndef MQPKI_WEB_H
#define MQPKI_WEB_H

#include <stddef.h>

struct web_asset {
    const char *name; /* file name under web/, e.g. "style.css" */
    const unsigned char *data;
    size_t len;
};

/* Every embedded file, ended by an entry whose name is NULL. */
extern const struct web_asset web_assets[];

#endif
