/* libFuzzer target for message templates: bytes -> compile -> render against an endpoint, with
 * substitutions taken from the input. Template text comes from campaign authors and from the
 * template API, and the renderer runs inside the delivery loop, so a template must never crash
 * it, loop without bound or write past its limits.
 *
 * Input: one flags byte (bit 0: escape {{x}}, as HTML or, with bit 3, percent-encoded for a
 * URI; bit 1: the JSON becomes per-message substitutions, bit 2: it becomes
 * DefaultSubstitutions), then the template text, then optionally a NUL and a JSON object.
 * Invariants checked: a compile error names the template and a line and column; a render either
 * fails with a message naming the template or yields NUL-terminated text within the output
 * limit; rendering the same template again into the reused output gives the same text (helpers'
 * scratch memory and the output buffer carry nothing from one render to the next), unless it
 * may call uuid, which is random by design; the clock is manual so now renders the same; a
 * template of printable ASCII without a raw tag ({{{x}}}, {{&x}}) renders printable ASCII when
 * it percent-encodes (what a List-Unsubscribe value needs), whatever the endpoint holds. Build
 * and run with tools/fuzz. */
#define _GNU_SOURCE /* memmem */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/clock.h"
#include "runtime/template.h"

#define NAME "fuzz(v1)"

static json_t *endpoint;

static void setup(void) {
  /* An endpoint in Pinpoint's EndpointResponse shape, with each kind of value a template reads:
   * lists, empty and non-ASCII strings, numbers, nested objects, booleans and null. */
  static const char *const text =
      "{\"Id\":\"ep-1\",\"ChannelType\":\"EMAIL\",\"Address\":\"ann@example.com\","
      "\"EndpointStatus\":\"ACTIVE\",\"OptOut\":\"NONE\",\"CohortId\":\"42\","
      "\"Attributes\":{\"Interests\":[\"cats\",\"dogs\",\"<b>&'\\\"\"],\"Plan\":[\"\"],"
      "\"Last Name\":[\"Ødegård\"],\"Empty\":[]},"
      "\"Metrics\":{\"visits\":3,\"spend\":12.5,\"neg\":-1e300,\"zero\":0},"
      "\"User\":{\"UserId\":\"u-1\",\"UserAttributes\":{\"FirstName\":[\"Ann\"],"
      "\"Tags\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\",\"j\",\"k\",\"l\",\"m\","
      "\"n\",\"o\",\"p\",\"q\"]}},"
      "\"Demographic\":{\"Timezone\":\"Europe/Oslo\",\"Locale\":\"nb_NO\"},"
      "\"Location\":{\"Country\":\"NO\",\"Latitude\":59.9,\"Longitude\":10.7},"
      "\"Flags\":{\"on\":true,\"off\":false,\"none\":null}}";
  endpoint = json_loads(text, 0, NULL);
  if (endpoint == NULL) abort();
  herald_clock_set_manual(1, 1795964645007LL); /* 2026-11-29T15:04:05.007Z */
}

static void check_message(const HeraldError *err) {
  if (err->msg[0] == '\0') abort();
  if (strncmp(err->msg, NAME ": ", strlen(NAME) + 2) != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (endpoint == NULL) setup();
  if (size < 1) return 0;
  int flags = data[0];
  const char *text = (const char *)data + 1;
  size_t len = size - 1;
  const char *nul = memchr(text, '\0', len);
  json_t *vars = NULL;
  if (nul != NULL) {
    size_t jlen = len - (size_t)(nul + 1 - text);
    len = (size_t)(nul - text);
    json_t *map = json_loadb(nul + 1, jlen, JSON_DECODE_ANY, NULL);
    if (map != NULL) {
      HeraldError verr = {0};
      if (herald_template_vars(map, &vars, &verr) != kHeraldOk) {
        if (verr.msg[0] == '\0') abort();
        vars = NULL;
      }
      json_decref(map);
    }
  }
  const json_t *subs = (flags & 2) ? vars : NULL;
  const json_t *defaults = (flags & 4) ? vars : NULL;

  HeraldTemplate *t = NULL;
  HeraldError err = {0};
  int escape = !(flags & 1) ? HERALD_TEMPLATE_ESCAPE_NONE
               : (flags & 8) ? HERALD_TEMPLATE_ESCAPE_URI : HERALD_TEMPLATE_ESCAPE_HTML;
  if (herald_template_compile(NAME, text, len, escape, &t, &err) != kHeraldOk) {
    check_message(&err);
    /* Only a limit or a syntax error carries a position; running out of memory does not. */
    if (err.code != kHeraldNoMemory && strstr(err.msg, ": line ") == NULL &&
        strstr(err.msg, " bytes, more than ") == NULL)
      abort();
    json_decref(vars);
    return 0;
  }
  if (strcmp(herald_template_name(t), NAME) != 0) abort();

  HeraldTemplateOutput out = {0};
  out.max = 1 << 20;  /* a smaller limit than the default, so the limit itself is exercised */
  char *first = NULL;
  size_t first_len = 0;
  int draws_uuid = memmem(text, len, "uuid", 4) != NULL;
  /* Raw tags start "{{{", "{{~{" or "{{&" (spaces may come before the '&'): text without '&'
   * or a second '{' after "{{" has none. */
  int printable = escape == HERALD_TEMPLATE_ESCAPE_URI && memchr(text, '&', len) == NULL &&
                  memmem(text, len, "{{{", 3) == NULL && memmem(text, len, "{{~{", 4) == NULL;
  for (size_t i = 0; printable && i < len; i++)
    if ((unsigned char)text[i] < 32 || (unsigned char)text[i] > 126) printable = 0;
  for (int round = 0; round < 2; round++) {
    HeraldError rerr = {0};
    int rc = herald_template_render(t, endpoint, subs, defaults, &out, &rerr);
    if (rc != kHeraldOk) {
      check_message(&rerr);
      if (round == 1 && first != NULL) abort();  /* the same render failed the second time */
      break;
    }
    if (out.len > out.max || out.data == NULL || out.data[out.len] != '\0') abort();
    for (size_t i = 0; printable && i < out.len; i++)
      if ((unsigned char)out.data[i] < 32 || (unsigned char)out.data[i] > 126) abort();
    if (round == 0) {
      first = malloc(out.len + 1);
      if (first == NULL) abort();
      memcpy(first, out.data, out.len + 1);
      first_len = out.len;
    } else if (!draws_uuid && (out.len != first_len || memcmp(out.data, first, first_len) != 0)) {
      abort();
    }
  }
  free(first);
  herald_template_output_free(&out);
  herald_template_free(t);
  json_decref(vars);
  return 0;
}
