/* RFC 5322 / MIME messages for the email channel: multipart/alternative text + HTML in
 * quoted-printable, RFC 2047 encoded words for non-ASCII header text, a Message-ID derived from
 * the message's idempotency key (so a retried message keeps its id) and the key verbatim in
 * X-Herald-Message-Id (bounces and complaints are matched on them), and the List-Unsubscribe
 * headers of RFC 2369 / RFC 8058. */
#ifndef HERALD_SMTP_MESSAGE_H
#define HERALD_SMTP_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/error.h"

typedef struct {
  const char *name;
  const char *value;
} HeraldMailHeader;

typedef struct {
  const char *from;                 /* "Display Name <addr@domain>" or "addr@domain" */
  const char *const *to;            /* mailboxes, as from */
  size_t nto;
  const char *subject;              /* UTF-8; control characters (line breaks) become spaces */
  const char *text;                 /* at least one of text and html */
  const char *html;
  const char *message_key;          /* the idempotency key: Message-ID <key@from-domain> */
  const HeraldMailHeader *headers;  /* extra headers; may not replace the structural ones.
                                     * In an address header (Reply-To, Sender, ...) only the
                                     * display names are encoded */
  size_t nheaders;
  const char *list_unsubscribe;     /* the header's value, e.g. "<https://x/u?t=1>" (or NULL) */
  int one_click;                    /* List-Unsubscribe-Post: List-Unsubscribe=One-Click,
                                     * when list_unsubscribe holds an https: URI (RFC 8058) */
  int64_t date_ms;                  /* the Date header */
} HeraldMailMessage;

/* Builds the message into *out (malloc'd, CRLF line ends, caller frees; *out_len its length).
 * message_id receives "<...>" (give 512 bytes). Errors start with the field they concern
 * ("from: ", "to[1]: ", "subject: ", "headers['Reply-To']: ", ...): the email channel tells
 * a sender's mistake from a recipient's by it. Addresses must be ASCII (no SMTPUTF8). */
int herald_smtp_message_build(const HeraldMailMessage *m, char **out, size_t *out_len,
                              char *message_id, size_t message_id_size, HeraldError *err);

/* Why a message's own headers may not use the header name (case-insensitive), or NULL when
 * they may: the builder writes it itself, or servers on the way do (trace fields), or it would
 * say the message was resent. Its text follows "headers['Name']: " in the builder's refusal;
 * a profile's headers are checked with it when they are defined. */
const char *herald_smtp_header_reserved(const char *name);

/* Why a message's own header name: value may not be sent, or NULL when it may: a missing or
 * invalid name, a reserved one (herald_smtp_header_reserved), a value missing or with a line
 * break. Its text follows "headers['Name']: " in the builder's refusal; campaigns, templates
 * and direct messages check their headers with it when they are defined. */
const char *herald_smtp_header_problem(const char *name, const char *value);

/* Pinpoint's limits on a MessageHeader: a name of up to 126 characters, a value of up to 870
 * once its message variables are rendered. */
#define HERALD_SMTP_GIVEN_NAME_MAX 126
#define HERALD_SMTP_GIVEN_VALUE_MAX 870

/* The reason value (a template's text, or what it rendered) is past the value limit,
 * counted in UTF-8 characters, not bytes; NULL within it. */
const char *herald_smtp_given_value_too_long(const char *value);

/* The same for a header as a campaign, a stored template or a direct message gives it (within
 * the limits above), value
 * NULL to check the name alone: List-Unsubscribe and List-Unsubscribe-Post are taken there,
 * as Pinpoint's messages give them, and the email channel makes them the message's own
 * list_unsubscribe and one_click (a List-Unsubscribe-Post other than RFC 8058's
 * "List-Unsubscribe=One-Click" is refused). */
const char *herald_smtp_header_given_problem(const char *name, const char *value);

/* The addr-spec of a mailbox ("Name <a@b>" -> "a@b"), checked (ASCII only); field names it in
 * errors. */
int herald_smtp_address(const char *mailbox, const char *field, char *out, size_t size,
                        HeraldError *err);

#endif
