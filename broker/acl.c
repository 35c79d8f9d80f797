/* broker: topic access rules for the service identity, devices and the ACL file. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

#define ACL_MAX_RULES 4096
#define ACL_LINE_MAX  1024

struct rule {
    char who[PROTO_ASSET_ID_MAX + 1]; /* asset id or "*" */
    char *pattern;                    /* may hold %u */
    int access;                       /* ACL_READ | ACL_WRITE */
};

struct acl {
    struct rule *v;
    size_t n;
};

/* One level of a topic: [p, end). */
static size_t level_len(const char *p)
{
    const char *slash = strchr(p, '/');
    return slash != NULL ? (size_t)(slash - p) : strlen(p);
}

int acl_topic_covers(const char *pattern, const char *subject)
{
    const char *p = pattern, *s = subject;
    int first = 1, covered = 0;

    for (;;) {
        size_t pl = level_len(p), sl = level_len(s);
        if (pl == 1 && p[0] == '#') {
            /* MQTT 4.7.2: wildcards at the first level do not match $-topics. */
            covered = !(first && s[0] == '$');
            goto out;
        }
        if (pl == 1 && p[0] == '+') {
            if ((sl == 1 && s[0] == '#') || (first && s[0] == '$'))
                goto out;
        } else if (pl != sl || memcmp(p, s, pl) != 0) {
            goto out;
        }
        p += pl;
        s += sl;
        first = 0;
        if (*p == '\0' || *s == '\0') {
            /* "a/#" also covers "a" (MQTT 4.7.1.2). */
            covered = (*p == '\0' && *s == '\0') || (*s == '\0' && strcmp(p, "/#") == 0);
            goto out;
        }
        p++;
        s++;
    }
out:
    return covered;
}

/* Is topic under prefix "A/B/" (or exactly "A/B")? */
static int under(const char *topic, const char *prefix, const char *id)
{
    size_t pl = strlen(prefix), il = strlen(id);

    if (strncmp(topic, prefix, pl) != 0 || strncmp(topic + pl, id, il) != 0)
        return 0;
    return topic[pl + il] == '\0' || topic[pl + il] == '/';
}

/* Expands %u in pattern with id into out; -1 when it does not fit. */
static int expand(const char *pattern, const char *id, char *out, size_t size)
{
    size_t n = 0, il = strlen(id);

    for (const char *p = pattern; *p != '\0'; p++) {
        if (p[0] == '%' && p[1] == 'u') {
            if (n + il >= size)
                return -1;
            memcpy(out + n, id, il);
            n += il;
            p++;
            continue;
        }
        if (n + 1 >= size)
            return -1;
        out[n++] = *p;
    }
    out[n] = '\0';
    return 0;
}

static int file_grants(const struct acl *a, const char *id, int access, const char *topic)
{
    char pat[ACL_LINE_MAX + 128];
    int need = access == ACL_SUBSCRIBE ? ACL_READ : access;

    if (a == NULL)
        return 0;
    for (size_t i = 0; i < a->n; i++) {
        const struct rule *r = &a->v[i];
        if (!(r->access & need) || (strcmp(r->who, "*") != 0 && strcmp(r->who, id) != 0))
            continue;
        if (expand(r->pattern, id, pat, sizeof(pat)) == 0 && acl_topic_covers(pat, topic))
            return 1;
    }
    return 0;
}

int acl_allowed(const struct acl *a, const char *id, int is_service, int access, const char *topic)
{
    int ok = 0;

    if (access == ACL_UNSUBSCRIBE) {
        ok = 1;
        goto out;
    }
    if (is_service) {
        ok = proto_topic_is_control(topic);
        goto out;
    }
    /* Only the service publishes on the control plane, whatever the ACL file says. */
    if (access == ACL_WRITE && proto_topic_is_control(topic)) {
        ok = 0;
        goto out;
    }
    if (under(topic, "fleet/", id) && strchr(id, '+') == NULL) {
        /* A filter below fleet/ID/ cannot reach another asset's topics. */
        ok = 1;
        goto out;
    }
    if (access != ACL_WRITE) {
        char own[PROTO_TOPIC_MAX];
        if (proto_topic_asset_cmd(id, own) == 0 && strcmp(topic, own) == 0) {
            ok = 1;
            goto out;
        }
    }
    ok = file_grants(a, id, access, topic);
out:
    return ok;
}

static char *trim(char *s)
{
    char *e;

    while (isspace((unsigned char)*s))
        s++;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

int acl_load(const char *path, struct acl **out, char *why, size_t why_len)
{
    struct acl *a = NULL;
    char line[ACL_LINE_MAX + 2];
    FILE *f = NULL;
    int lineno = 0, rc = -1;

    *out = NULL;
    if ((a = calloc(1, sizeof(*a))) == NULL) {
        snprintf(why, why_len, "out of memory");
        goto out;
    }
    if (path == NULL || path[0] == '\0') {
        rc = 0;
        goto done;
    }
    if ((f = fopen(path, "r")) == NULL) {
        snprintf(why, why_len, "%s: cannot read the ACL file", path);
        goto out;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        char *s, *who, *pattern, *access, *extra, *save = NULL;
        struct rule r;
        lineno++;
        if (strlen(line) > ACL_LINE_MAX) {
            snprintf(why, why_len, "%s:%d: line too long", path, lineno);
            goto out;
        }
        if ((s = strchr(line, '#')) != NULL && (s == line || isspace((unsigned char)s[-1])))
            *s = '\0';
        s = trim(line);
        if (*s == '\0')
            continue;
        who = strtok_r(s, " \t", &save);
        pattern = strtok_r(NULL, " \t", &save);
        access = strtok_r(NULL, " \t", &save);
        extra = strtok_r(NULL, " \t", &save);
        memset(&r, 0, sizeof(r));
        if (pattern == NULL || access == NULL || extra != NULL ||
            (strcmp(who, "*") != 0 && strlen(who) >= sizeof(r.who))) {
            snprintf(why, why_len, "%s:%d: expected 'ASSET|* PATTERN read|write|readwrite'", path,
                     lineno);
            goto out;
        }
        if (strcmp(access, "read") == 0)
            r.access = ACL_READ;
        else if (strcmp(access, "write") == 0)
            r.access = ACL_WRITE;
        else if (strcmp(access, "readwrite") == 0)
            r.access = ACL_READ | ACL_WRITE;
        else {
            snprintf(why, why_len, "%s:%d: access '%.20s': use read, write or readwrite", path,
                     lineno, access);
            goto out;
        }
        if (a->n == ACL_MAX_RULES) {
            snprintf(why, why_len, "%s: more than %d rules", path, ACL_MAX_RULES);
            goto out;
        }
        snprintf(r.who, sizeof(r.who), "%s", who);
        if ((r.pattern = strdup(pattern)) == NULL) {
            snprintf(why, why_len, "out of memory");
            goto out;
        }
        if (a->n % 64 == 0) {
            void *v = realloc(a->v, (a->n + 64) * sizeof(*a->v));
            if (v == NULL) {
                free(r.pattern);
                snprintf(why, why_len, "out of memory");
                goto out;
            }
            a->v = v;
        }
        a->v[a->n++] = r;
    }
    rc = 0;
done:
    *out = a;
    a = NULL;
out:
    if (f != NULL)
        fclose(f);
    acl_free(a);
    return rc;
}

void acl_free(struct acl *a)
{
    if (a == NULL)
        return;
    for (size_t i = 0; i < a->n; i++)
        free(a->v[i].pattern);
    free(a->v);
    free(a);
}
