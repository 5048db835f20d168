package comet

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/caddy-comet/comet/internal/hub"
)

// BatchContentType is the media type of a POST body that carries many
// events: one JSON object per line (see batchLine). Any other body is one
// event, whatever its type, so that an NDJSON document can still be
// published as the data of a single event.
const BatchContentType = "application/vnd.comet.batch+ndjson"

// Limits of batches on a route, unless configured.
const (
	DefaultMaxBatchSize   = 1 << 20
	DefaultMaxBatchEvents = 1000
)

// Limits of batches on the admin API, which backends use for bulk work.
const (
	AdminMaxBatchSize   = 16 << 20
	AdminMaxBatchEvents = 10000
)

// batchLine is one line of a batch: an event and its context. Data is
// the payload as text when it is a JSON string and as JSON otherwise
// (content type application/json unless given); DataBase64 carries binary
// payloads.
type batchLine struct {
	Context     *string         `json:"context"`
	Type        string          `json:"type"`
	ContentType string          `json:"content_type"`
	Data        json.RawMessage `json:"data"`
	DataBase64  *string         `json:"data_base64"`
}

// batchLimits bound a batch: its body, its events, and each event's data.
type batchLimits struct {
	size, eventSize int64
	events          int
}

// isBatch reports whether the request's body is a batch.
func isBatch(r *http.Request) bool {
	ct, _, _ := strings.Cut(r.Header.Get("Content-Type"), ";")
	return strings.EqualFold(strings.TrimSpace(ct), BatchContentType)
}

// lineError is what is wrong with one line of a batch, counted from 1.
type lineError struct {
	line int
	err  error
}

func (e *lineError) Error() string { return fmt.Sprintf("line %d: %v", e.line, e.err) }

func (e *lineError) Unwrap() error { return e.err }

// readBatch reads a batch from the request's body and checks every line
// before anything is published. On a route, key is the request's context:
// lines go to it, and one that names another is refused, because what a
// route may write is what its matcher and tokens allow. On the admin API
// key is empty and every line names its context. It returns the lines'
// numbers beside the publications, as blank lines are skipped.
func readBatch(w http.ResponseWriter, r *http.Request, key string, limits batchLimits) ([]Publication, []int, error) {
	body, err := readMessage(w, r, limits.size)
	if err != nil {
		return nil, nil, err
	}
	var batch []Publication
	var lines []int
	for n, text := range bytes.Split(body, []byte("\n")) {
		if len(bytes.TrimSpace(text)) == 0 {
			continue
		}
		if len(batch) == limits.events {
			return nil, nil, fmt.Errorf("%w: more than %d events in a batch", errMessageTooLarge, limits.events)
		}
		pub, err := parseBatchLine(text, key, limits.eventSize)
		if err != nil {
			return nil, nil, &lineError{line: n + 1, err: err}
		}
		batch = append(batch, pub)
		lines = append(lines, n+1)
	}
	if len(batch) == 0 {
		return nil, nil, errors.New("empty batch")
	}
	return batch, lines, nil
}

// batchFields are a batch line's field names, as they must be spelled.
var batchFields = [...]string{"context", "type", "content_type", "data", "data_base64"}

// checkFieldNames refuses a line whose field names are not exactly
// batchFields', or that names one twice. Go's decoder matches names
// without regard to case and keeps the last of duplicates: a filter in
// front of comet that reads the first "context" would see another context
// than the one published to.
func checkFieldNames(text []byte) error {
	dec := json.NewDecoder(bytes.NewReader(text))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return errors.New("not an event object")
	}
	var seen [len(batchFields)]bool
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("not an event object: %v", err)
		}
		name, _ := tok.(string)
		i := slices.Index(batchFields[:], name)
		switch {
		case i < 0:
			return fmt.Errorf("unknown field %.64q (fields are %s)", name, strings.Join(batchFields[:], ", "))
		case seen[i]:
			return fmt.Errorf("field %q given twice", name)
		}
		seen[i] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return fmt.Errorf("not an event object: %v", err)
		}
	}
	return nil
}

// parseBatchLine decodes one line into a publication.
func parseBatchLine(text []byte, key string, eventSize int64) (Publication, error) {
	if err := checkFieldNames(text); err != nil {
		return Publication{}, err
	}
	var line batchLine
	dec := json.NewDecoder(bytes.NewReader(text))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&line); err != nil {
		return Publication{}, fmt.Errorf("not an event object: %v", err)
	}
	if dec.More() {
		return Publication{}, errors.New("more than one JSON value")
	}
	pub := Publication{Key: key, Event: Event{Type: line.Type, ContentType: line.ContentType}}
	switch {
	case line.Context == nil && key == "":
		return Publication{}, errors.New("no context")
	case line.Context != nil && key == "":
		pub.Key = *line.Context
	case line.Context != nil && *line.Context != key:
		return Publication{}, fmt.Errorf("context %.64q is not this route's context", *line.Context)
	}
	data, err := line.payload()
	if err != nil {
		return Publication{}, err
	}
	if int64(len(data)) > eventSize {
		return Publication{}, fmt.Errorf("%w: %d bytes of data, the limit is %d", errMessageTooLarge, len(data), eventSize)
	}
	if pub.Event.ContentType == "" && line.DataBase64 == nil && len(line.Data) > 0 && line.Data[0] != '"' {
		pub.Event.ContentType = "application/json"
	}
	pub.Event.Data = data
	if err := hub.CheckPublication(&pub); err != nil {
		return Publication{}, err
	}
	return pub, nil
}

// payload returns the line's data.
func (l *batchLine) payload() ([]byte, error) {
	switch {
	case l.DataBase64 != nil && l.Data != nil:
		return nil, errors.New("both data and data_base64")
	case l.DataBase64 != nil:
		data, err := base64.StdEncoding.DecodeString(*l.DataBase64)
		if err != nil {
			return nil, fmt.Errorf("data_base64: %v", err)
		}
		return data, nil
	case len(l.Data) > 0 && l.Data[0] == '"':
		var s string
		if err := json.Unmarshal(l.Data, &s); err != nil {
			return nil, fmt.Errorf("data: %v", err)
		}
		return []byte(s), nil
	case string(l.Data) == "null":
		return nil, nil
	default:
		return []byte(l.Data), nil
	}
}

// batchReceipt is one line's receipt in a batch's answer: the event's id,
// cursor and the subscribers it woke, or why it was not published.
type batchReceipt struct {
	Line    int    `json:"line"`
	Context string `json:"context"`
	ID      uint64 `json:"id,omitempty"`
	Cursor  string `json:"cursor,omitempty"`
	Woken   int    `json:"woken"`
	Error   string `json:"error,omitempty"`
}

// batchAnswer answers a batch: a receipt per event, in order, and what
// stopped it if it stopped on the way.
type batchAnswer struct {
	Receipts []batchReceipt `json:"receipts"`
	Error    string         `json:"error,omitempty"`
}

// newBatchAnswer pairs the batch with its receipts. If err stopped the
// batch on the way, the receipts of events not published say so.
func newBatchAnswer(batch []Publication, lines []int, receipts []Receipt, err error) batchAnswer {
	a := batchAnswer{Receipts: make([]batchReceipt, len(batch))}
	for i := range batch {
		br := batchReceipt{Line: lines[i], Context: batch[i].Key}
		if i < len(receipts) && receipts[i].Published() {
			br.ID, br.Cursor, br.Woken = receipts[i].Cursor.ID, receipts[i].Cursor.String(), receipts[i].Woken
		} else {
			br.Error = "not published"
		}
		a.Receipts[i] = br
	}
	if be, ok := errors.AsType[*BatchError](err); ok {
		a.Error = fmt.Sprintf("line %d, context %.64q: %v", lines[be.Index], batch[be.Index].Key, be.Err)
	} else if err != nil {
		a.Error = err.Error()
	}
	return a
}

// writeBatchAnswer writes the answer with status.
func writeBatchAnswer(w http.ResponseWriter, status int, a batchAnswer) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	return json.NewEncoder(w).Encode(a)
}
