package server_test

import (
	"context"
	"sync"
	"testing"
	"time"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
	"github.com/tokenvault/tokenvault/vault/audit"
)

// The two stampede defences, each alone: callers at once share one refresh
// (single-flight), and a caller that reaches the critical section after
// someone refreshed takes that refresh (the re-check under the lock). Each
// test below fails with its defence removed, the other in place.

// TestStampede_SequentialForced_ShareTheRefresh: forced calls one after the
// other, each after the last returned, within 2 s of the refresh, do not
// overlap (single-flight cannot merge them): only the re-check makes them
// take the refresh just made.
func TestStampede_SequentialForced_ShareTheRefresh(t *testing.T) {
	e := newEnv(t, providertest.Options{})
	id := e.connect("alice")
	ctx := context.Background()
	e.clock.Add(3 * time.Second)
	var first string
	for i := range 5 {
		r, err := e.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, ForceRefresh: true})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = r.AccessToken
		} else if r.AccessToken != first {
			t.Errorf("forced call %d got another token; want the one refresh's", i)
		}
		e.clock.Add(100 * time.Millisecond)
	}
	if n := e.fake.Stats().Token["refresh_token"]; n != 1 {
		t.Errorf("5 forced calls within 2 s caused %d refreshes; want 1", n)
	}
}

// TestStampede_Waiters_ShareTheFlight: while one refresh is held at the
// provider, callers that ask meanwhile wait for its result, not for the
// connection's lock: one that gives up is answered at once (its call ends
// and is audited while the provider still holds the refresh), and the
// others get the one refresh's token. Without single-flight they queue on
// the lock, and a caller that gave up stays stuck there until the
// provider answers.
func TestStampede_Waiters_ShareTheFlight(t *testing.T) {
	var (
		mu      sync.Mutex
		hold    = make(chan struct{})
		arrived = make(chan struct{}, 64)
	)
	e := newEnv(t, providertest.Options{EditTokenResponse: func(resp map[string]any) {
		mu.Lock()
		h := hold
		mu.Unlock()
		arrived <- struct{}{}
		<-h
	}})
	close(hold) // the connect flow's exchange passes
	id := e.connect("alice")
	<-arrived
	mu.Lock()
	hold = make(chan struct{})
	mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e.clock.Add(3 * time.Second)

	const callers = 10
	var wg sync.WaitGroup
	got := make([]string, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := e.api.GetAccessToken(ctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, ForceRefresh: true})
			if err != nil {
				t.Errorf("caller %d: %v", i, err)
				return
			}
			got[i] = r.AccessToken
		}()
		if i == 0 {
			<-arrived // the first refresh is at the provider, held
		}
	}
	// One more caller gives up after 200 ms: its call must end now.
	app := tvv1.NewTokenVaultServiceClient(e.dial("app"))
	sctx, scancel := context.WithTimeout(ctx, 200*time.Millisecond)
	_, err := app.GetAccessToken(sctx, &tvv1.GetAccessTokenRequest{ConnectionId: id, ForceRefresh: true})
	scancel()
	if err == nil {
		t.Fatal("the impatient caller got a token while the provider held the refresh")
	}
	ended := false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && !ended; time.Sleep(50 * time.Millisecond) {
		if err := e.audit.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		recs, _, err := e.audit.List(ctx, audit.Filter{Caller: "app"}, "", 10)
		if err != nil {
			t.Fatal(err)
		}
		ended = len(recs) > 0
	}
	if !ended {
		t.Error("the call that gave up had not ended 10 s later, while the provider held the refresh; want it answered at once")
	}
	close(hold)
	wg.Wait()
	for i := range got {
		if got[i] != got[0] {
			t.Fatalf("caller %d got another token than caller 0", i)
		}
	}
	if n := e.fake.Stats().Token["refresh_token"]; n != 1 {
		t.Errorf("%d concurrent forced calls caused %d refreshes; want 1", callers, n)
	}
}
