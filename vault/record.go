package vault

import (
	"encoding/json"

	"google.golang.org/protobuf/proto"

	recordv1 "github.com/tokenvault/tokenvault/proto/tokenvault/record/v1"
)

// A connection record is stored as the protobuf message
// tokenvault.record.v1.Connection, sealed. It was JSON before: decoding one
// record took ten times longer (most of a start with 100,000 connections)
// and the file was larger. Records written as JSON are still read, told
// apart by their first byte: a JSON object starts with '{', which as a
// protobuf tag would be field 15 with the deprecated group wire type, which
// the message never has.

// marshalRecord encodes c for the store.
func marshalRecord(c *Connection) ([]byte, error) {
	return proto.MarshalOptions{Deterministic: true}.Marshal(toRecord(c))
}

// unmarshalRecord decodes a stored record into c, which it overwrites; pb
// is scratch space for the protobuf encoding (nil: allocate one).
func unmarshalRecord(b []byte, c *Connection, pb *recordv1.Connection) error {
	if len(b) > 0 && b[0] == '{' {
		*c = Connection{}
		return json.Unmarshal(b, c)
	}
	if pb == nil {
		pb = new(recordv1.Connection)
	}
	if err := proto.Unmarshal(b, pb); err != nil {
		return err
	}
	fromRecord(pb, c)
	return nil
}

func toRecord(c *Connection) *recordv1.Connection {
	r := &recordv1.Connection{
		Id: c.ID, Owner: c.Owner, Tenant: c.Tenant, Provider: c.Provider, Label: c.Label, Purpose: c.Purpose,
		Status: string(c.Status), StatusReason: c.StatusReason, RequestedScopes: c.RequestedScopes,
		CreatedAt: nanos(c.CreatedAt), UpdatedAt: nanos(c.UpdatedAt), LastRefreshedAt: nanos(c.LastRefreshedAt),
		LastUsedAt: nanos(c.LastUsedAt), LastValidatedAt: nanos(c.LastValidatedAt),
		Generation: c.Generation, Connects: int64(c.Connects), EventSeq: c.EventSeq,
		Failures: int64(c.Failures), LastError: c.LastError, NextRetryAt: nanos(c.NextRetryAt),
		AppMetadata: c.AppMetadata, CreatedBy: c.CreatedBy, Imported: c.Imported,
		Grant: &recordv1.Grant{
			Scopes: c.Grant.Scopes, Account: c.Grant.Account,
			Metadata: c.Grant.Metadata, Secrets: c.Grant.Secrets,
		},
	}
	if len(c.Transitions) > 0 {
		r.Transitions = make([]*recordv1.Transition, len(c.Transitions))
		for i, t := range c.Transitions {
			r.Transitions[i] = &recordv1.Transition{At: nanos(t.At), From: string(t.From), To: string(t.To), Reason: t.Reason}
		}
	}
	if f := c.InFlight; f != nil {
		r.InFlight = &recordv1.InFlight{Credential: f.Credential, StartedAt: nanos(f.StartedAt), Attempts: int64(f.Attempts)}
	}
	if len(c.Grant.Tokens) > 0 {
		r.Grant.Tokens = make([]*recordv1.Token, len(c.Grant.Tokens))
		for i, t := range c.Grant.Tokens {
			r.Grant.Tokens[i] = &recordv1.Token{
				Name: t.Name, AccessToken: t.AccessToken, RefreshToken: t.RefreshToken, TokenType: t.TokenType,
				Expiry: nanos(t.Expiry), RefreshExpiry: nanos(t.RefreshExpiry), Scopes: t.Scopes, IssuedAt: nanos(t.IssuedAt),
			}
		}
	}
	return r
}

// fromRecord sets *c from r. c shares r's slices and maps: a later
// proto.Unmarshal into r replaces them rather than writing into them.
func fromRecord(r *recordv1.Connection, c *Connection) {
	*c = Connection{
		ID: r.Id, Owner: r.Owner, Tenant: r.Tenant, Provider: r.Provider, Label: r.Label, Purpose: r.Purpose,
		Status: Status(r.Status), StatusReason: r.StatusReason, RequestedScopes: nilIfEmpty(r.RequestedScopes),
		CreatedAt: timeOf(r.CreatedAt), UpdatedAt: timeOf(r.UpdatedAt), LastRefreshedAt: timeOf(r.LastRefreshedAt),
		LastUsedAt: timeOf(r.LastUsedAt), LastValidatedAt: timeOf(r.LastValidatedAt),
		Generation: r.Generation, Connects: int(r.Connects), EventSeq: r.EventSeq,
		Failures: int(r.Failures), LastError: r.LastError, NextRetryAt: timeOf(r.NextRetryAt),
		AppMetadata: nilIfEmptyMap(r.AppMetadata), CreatedBy: r.CreatedBy, Imported: r.Imported,
	}
	if len(r.Transitions) > 0 {
		c.Transitions = make([]Transition, len(r.Transitions))
		for i, t := range r.Transitions {
			c.Transitions[i] = Transition{At: timeOf(t.At), From: Status(t.From), To: Status(t.To), Reason: t.Reason}
		}
	}
	if f := r.InFlight; f != nil {
		c.InFlight = &InFlight{Credential: f.Credential, StartedAt: timeOf(f.StartedAt), Attempts: int(f.Attempts)}
	}
	g := r.Grant
	if g == nil {
		return
	}
	c.Grant = Grant{
		Scopes: nilIfEmpty(g.Scopes), Account: g.Account,
		Metadata: nilIfEmptyMap(g.Metadata), Secrets: nilIfEmptyMap(g.Secrets),
	}
	if len(g.Tokens) > 0 {
		c.Grant.Tokens = make([]Token, len(g.Tokens))
		for i, t := range g.Tokens {
			c.Grant.Tokens[i] = Token{
				Name: t.Name, AccessToken: t.AccessToken, RefreshToken: t.RefreshToken, TokenType: t.TokenType,
				Expiry: timeOf(t.Expiry), RefreshExpiry: timeOf(t.RefreshExpiry), Scopes: nilIfEmpty(t.Scopes), IssuedAt: timeOf(t.IssuedAt),
			}
		}
	}
}

// nilIfEmpty keeps decoded records equal to the ones encoded: protobuf
// does not tell an empty list from none.
func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func nilIfEmptyMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	return m
}
