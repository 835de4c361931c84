package server

import (
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// A FieldBound is the validation table's row of one request field.
type FieldBound struct {
	MaxLen, MaxItems, MaxKey int
	Text                     bool
	MaxDur                   time.Duration
	Nested                   bool
	Records                  bool
}

// BoundOf returns the validation table's row of a request field.
func BoundOf(field protoreflect.FullName) (FieldBound, bool) {
	b, ok := fieldBounds[field]
	return FieldBound{b.maxLen, b.maxItems, b.maxKey, b.text, b.maxDur, b.nested, b.records}, ok
}

// BoundedFields returns the fields the validation table names.
func BoundedFields() []protoreflect.FullName {
	out := make([]protoreflect.FullName, 0, len(fieldBounds))
	for f := range fieldBounds {
		out = append(out, f)
	}
	return out
}
