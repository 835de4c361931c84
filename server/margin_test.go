package server_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/providers/providertest"
)

// TestGetAccessToken_MarginFitsTheToken reads a token continually (every
// 1/60 of its lifetime, over four lifetimes, on the fake clock) with tokens
// of 30 s, 5 min and 3,599 s (Google's) and min_valid_for default (5 min),
// short (1 s) and oversized (1 h, the most accepted): each token is
// refreshed once, when a quarter of its lifetime (at least 10 s) is left,
// never on every read; every token served is still valid for that margin.
func TestGetAccessToken_MarginFitsTheToken(t *testing.T) {
	for _, life := range []time.Duration{30 * time.Second, 5 * time.Minute, 3599 * time.Second} {
		for _, minValid := range []time.Duration{0, time.Second, time.Hour} {
			t.Run(fmt.Sprintf("%v token, min_valid_for %v", life, minValid), func(t *testing.T) {
				e := newEnv(t, providertest.Options{AccessTokenTTL: life})
				id := e.connect("alice")
				ctx := context.Background()
				req := &tvv1.GetAccessTokenRequest{ConnectionId: id}
				if minValid > 0 {
					req.MinValidFor = durationpb.New(minValid)
				}
				margin := max(life/4, 10*time.Second)
				if minValid > 0 {
					margin = min(margin, minValid)
				} else {
					margin = min(margin, 5*time.Minute)
				}
				step := life / 60
				var (
					last      string
					firstSeen time.Time
					changes   int
				)
				start := e.clock.Now()
				for e.clock.Now().Sub(start) < 4*life {
					res, err := e.api.GetAccessToken(ctx, req)
					if err != nil {
						t.Fatalf("at +%v: %v", e.clock.Now().Sub(start), err)
					}
					now := e.clock.Now()
					if left := res.ExpireTime.AsTime().Sub(now); left < margin {
						t.Fatalf("at +%v: served a token with %v left; want at least %v", now.Sub(start), left, margin)
					}
					if res.AccessToken != last {
						if last != "" {
							changes++
							// A token lasts until a quarter of its life (at
							// least 10 s) is left: refreshed once, not sooner.
							if held := now.Sub(firstSeen); held < life-max(life/4, 10*time.Second)-step {
								t.Fatalf("at +%v: token replaced after %v; want it kept until %v before expiry", now.Sub(start), held, margin)
							}
						}
						last, firstSeen = res.AccessToken, now
					}
					e.clock.Add(step)
				}
				refreshes := e.fake.Stats().Token["refresh_token"]
				if refreshes != changes {
					t.Errorf("%d refreshes for %d new tokens; want one each", refreshes, changes)
				}
				// Four lifetimes: one refresh per (1 - 1/4) of one, at most.
				if most := int(4*life/(life-max(life/4, 10*time.Second))) + 1; refreshes > most || refreshes < 3 {
					t.Errorf("%d refreshes over four lifetimes; want 3 to %d", refreshes, most)
				}
			})
		}
	}
}
