package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"mime"
	"net"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Error kinds. Handlers and the store return these (usually inside a clientError that carries
// the message for the client); writeError maps them to statuses in one table.
var (
	errInvalid         = errors.New("invalid input")
	errUnauthorized    = errors.New("unauthorized")
	errForbidden       = errors.New("forbidden")
	errNotFound        = errors.New("not found")
	errConflict        = errors.New("conflict")
	errTooLarge        = errors.New("request body too large")
	errUnsupportedType = errors.New("unsupported media type")
	errTooMany         = errors.New("too many requests")
	errUnavailable     = errors.New("service unavailable")
	errBusy            = errors.New("server busy")
)

var errorStatuses = []struct {
	kind    error
	status  int
	message string
}{
	{errInvalid, http.StatusBadRequest, "Invalid request"},
	{errUnauthorized, http.StatusUnauthorized, "Missing or invalid Authorization header"},
	{errForbidden, http.StatusForbidden, "You do not have permission to do that"},
	{errNotFound, http.StatusNotFound, "Not found"},
	{errConflict, http.StatusConflict, "Conflict"},
	{errTooLarge, http.StatusRequestEntityTooLarge, "Request body must not exceed 64 KiB"},
	{errUnsupportedType, http.StatusUnsupportedMediaType, "Content-Type must be application/json"},
	{errTooMany, http.StatusTooManyRequests, "Too many requests"},
	{errUnavailable, http.StatusServiceUnavailable, "Service temporarily unavailable, try again shortly"},
	{errBusy, http.StatusServiceUnavailable, "Server busy, try again shortly"},
}

// statusClientClosed records, in the request log, a request its client abandoned.
const statusClientClosed = 499

// clientError is an error whose message is meant for the client.
type clientError struct {
	kind    error
	message string
	fields  map[string]string // per-field reasons for validation errors
}

func (e *clientError) Error() string { return e.message }
func (e *clientError) Unwrap() error { return e.kind }

// fail returns a client error of the given kind with a message for the client.
func fail(kind error, message string) error {
	return &clientError{kind: kind, message: message}
}

// invalidFields returns a 400 listing every failing field, or nil when there are none.
func invalidFields(fields map[string]string) error {
	if len(fields) == 0 {
		return nil
	}
	return &clientError{kind: errInvalid, message: "Validation failed", fields: fields}
}

// waitError refuses a request for a while (a lockout, a cap, a rate limit): err is the
// reply, and writeError tells the client in Retry-After when to come back.
type waitError struct {
	wait time.Duration
	err  error
}

func (e waitError) Error() string { return e.err.Error() }
func (e waitError) Unwrap() error { return e.err }

// retryAfterSeconds renders a wait as a Retry-After value, rounding up.
func retryAfterSeconds(d time.Duration) string {
	return strconv.Itoa(int(math.Ceil(max(d, time.Second).Seconds())))
}

type errorBody struct {
	Message string            `json:"message"`
	Errors  map[string]string `json:"errors,omitempty"`
}

// writeError is the one place errors become responses. Anything that is not a known kind is
// logged and shown as a bare internal error, so database details never reach a client.
func writeError(w http.ResponseWriter, r *http.Request, logger *slog.Logger, err error) {
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		// The client hung up: no one reads the reply, and nothing went wrong on our side.
		// 499 is the conventional "client closed request" status of the request log.
		w.WriteHeader(statusClientClosed)
		return
	}
	if isUnavailable(err) {
		err = fmt.Errorf("%w: %w", errUnavailable, err)
		logger.WarnContext(r.Context(), "database unavailable", "err", err)
	}
	body := errorBody{Message: "Internal server error"}
	status := http.StatusInternalServerError
	for _, e := range errorStatuses {
		if errors.Is(err, e.kind) {
			status, body.Message = e.status, e.message
			break
		}
	}
	var ce *clientError
	if errors.As(err, &ce) {
		body.Message, body.Errors = ce.message, ce.fields
	}
	switch status {
	case http.StatusInternalServerError:
		logger.ErrorContext(r.Context(), "internal error", "err", err)
	case http.StatusUnauthorized:
		w.Header().Set("WWW-Authenticate", `Bearer realm="usermgmt"`)
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		retryAfter := "5"
		if wait := (waitError{}); errors.As(err, &wait) {
			retryAfter = retryAfterSeconds(wait.wait)
		}
		w.Header().Set("Retry-After", retryAfter)
	}
	writeJSON(w, status, body)
}

// isUnavailable reports whether err means the database cannot serve the request right now
// (unreachable, overloaded, or a deadlock lost), as opposed to a bug: such requests get a 503
// and may be retried.
func isUnavailable(err error) bool {
	if errors.Is(err, context.Canceled) {
		return false
	}
	var connectErr *pgconn.ConnectError
	var netErr net.Error
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &connectErr), errors.As(err, &netErr), pgconn.Timeout(err),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, context.DeadlineExceeded),
		// A connection that broke earlier in the same transaction: the next statement on it.
		errors.Is(err, pgconn.ErrConnClosed):
		return true
	case errors.As(err, &pgErr):
		// Class 08 is connection exceptions; 53300 too many connections; 57P01-57P03 are
		// shutdowns and "cannot connect now". 40001 and 40P01 (serialization failure,
		// deadlock) undo the transaction and go away when it is tried again.
		return strings.HasPrefix(pgErr.Code, "08") ||
			slices.Contains([]string{"53300", "57P01", "57P02", "57P03", "40001", "40P01"}, pgErr.Code)
	}
	return false
}

// apiFunc is a handler that returns its failure instead of writing it (as in the Go blog's
// "Error handling and Go"), so that its failure paths are early returns and every error
// becomes a reply in one place.
type apiFunc func(w http.ResponseWriter, r *http.Request) error

// serveAPI returns the adapter from apiFunc to http.Handler: an error the handler returns is
// written by writeError.
func serveAPI(logger *slog.Logger) func(apiFunc) http.Handler {
	return func(f apiFunc) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := f(w, r); err != nil {
				writeError(w, r, logger, err)
			}
		})
	}
}

// writeJSON writes v as the JSON response body with the given status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header()["Content-Type"] = jsonContentType
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client hung up; nothing useful can be done
}

// jsonContentType is the Content-Type of JSON replies, made once (see secureHeaderValues).
var jsonContentType = []string{"application/json"}

// message is the origin project's reply shape: {"message": ...}.
type message struct {
	Message string `json:"message"`
}

// maxBodyBytes bounds every request body, so a client cannot exhaust memory.
const maxBodyBytes = 64 << 10

// decode reads a JSON object from the request into a T. It answers every way a body can be
// wrong with a client error: wrong content type (415), too large (413), not a JSON object,
// unknown fields (all named), nulls and wrong types (400 naming the fields).
func decode[T any](w http.ResponseWriter, r *http.Request) (T, error) {
	var v T
	mediaType, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mediaType != "application/json" {
		return v, fail(errUnsupportedType, "Content-Type must be application/json")
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return v, fail(errTooLarge, "Request body must not exceed 64 KiB")
		}
		return v, fail(errInvalid, "Could not read the request body")
	}
	return v, decodeJSONObject(body, &v)
}

// decodeValid decodes a T, as decode does, and refuses it with every failing field when its
// field rules do not hold.
func decodeValid[T interface{ valid() map[string]string }](w http.ResponseWriter, r *http.Request) (T, error) {
	v, err := decode[T](w, r)
	if err != nil {
		return v, err
	}
	return v, invalidFields(v.valid())
}

// decodeJSONObject unmarshals a JSON object into the struct v points to, naming every unknown,
// null or mistyped field.
func decodeJSONObject(body []byte, v any) error {
	var object map[string]json.RawMessage
	if err := json.Unmarshal(body, &object); err != nil || object == nil {
		return fail(errInvalid, "Request body must be a JSON object")
	}
	known := jsonFieldNames(reflect.TypeOf(v).Elem())
	fields := map[string]string{}
	for name, raw := range object {
		switch {
		case !slices.Contains(known, name):
			fields[name] = "unknown field"
		case string(raw) == "null":
			fields[name] = "must not be null"
		default:
			if err := json.Unmarshal(raw, fieldPointer(v, name)); err != nil {
				fields[name] = "must be " + jsonKind(reflect.TypeOf(fieldPointer(v, name)).Elem())
			}
		}
	}
	if len(fields) > 0 {
		names := make([]string, 0, len(fields))
		for name := range fields {
			names = append(names, name)
		}
		sort.Strings(names)
		return &clientError{kind: errInvalid, message: "Invalid fields: " + strings.Join(names, ", "), fields: fields}
	}
	return nil
}

// jsonFieldNames lists the JSON names of a struct type's fields.
func jsonFieldNames(t reflect.Type) []string {
	names := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		names = append(names, name)
	}
	return names
}

// fieldPointer returns a pointer to the field of *v whose JSON name is name.
func fieldPointer(v any, name string) any {
	s := reflect.ValueOf(v).Elem()
	for i := range s.NumField() {
		if tag, _, _ := strings.Cut(s.Type().Field(i).Tag.Get("json"), ","); tag == name {
			return s.Field(i).Addr().Interface()
		}
	}
	panic("no field " + name) // callers only ask for names from jsonFieldNames
}

// jsonKind names the JSON type a Go type expects, for error messages.
func jsonKind(t reflect.Type) string {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int64:
		return "an integer"
	}
	return "a valid value"
}
