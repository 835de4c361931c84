package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	tvv1 "github.com/tokenvault/tokenvault/proto/tokenvault/v1"
	"github.com/tokenvault/tokenvault/vault"
	"github.com/tokenvault/tokenvault/vault/webhook"
)

// ErrorInfo reasons of an ended WatchEvents stream. Both carry
// resume_after_sequence in metadata: the sequence to pass as
// after_sequence to carry on without a gap.
const (
	// ReasonSubscriberTooSlow: the client read the stream so slowly that
	// its buffer of new events overflowed (RESOURCE_EXHAUSTED).
	ReasonSubscriberTooSlow = "SUBSCRIBER_TOO_SLOW"
	// ReasonShuttingDown: the sidecar is stopping (UNAVAILABLE).
	ReasonShuttingDown = "SHUTTING_DOWN"
)

// watchBuffer bounds how many new events wait for one WatchEvents stream
// before it is ended as too slow. A variable for tests only.
var watchBuffer = 1024

// WatchEvents streams events after req.after_sequence: the retained ones
// from the outbox, then new ones as they are committed. A caller limited to
// some providers sees only their connections' events.
func (s *tokenService) WatchEvents(req *tvv1.WatchEventsRequest, stream grpc.ServerStreamingServer[tvv1.WatchEventsResponse]) error {
	var types map[string]bool
	for _, t := range req.GetTypes() {
		if !slices.Contains(vault.EventTypes, t) {
			return invalidArgument(fmt.Sprintf("unknown event type %q", t))
		}
		if types == nil {
			types = map[string]bool{}
		}
		types[t] = true
	}
	caller := CallerFromContext(stream.Context())
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	if s.stopping != nil {
		go func() {
			select {
			case <-s.stopping:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	sub := s.v.Subscribe(req.GetAfterSequence(), watchBuffer)
	defer sub.Close()
	for {
		ev, err := sub.Next(ctx)
		if err != nil {
			resume := map[string]string{"resume_after_sequence": strconv.FormatUint(sub.Cursor(), 10)}
			switch {
			case errors.Is(err, vault.ErrSlowSubscriber):
				return statusWithReason(codes.ResourceExhausted, ReasonSubscriberTooSlow,
					fmt.Sprintf("the stream fell more than %d events behind; resume with after_sequence=%d", watchBuffer, sub.Cursor()), resume)
			case stream.Context().Err() != nil:
				// The caller's own deadline or cancellation: no reason of ours.
				return status.FromContextError(stream.Context().Err()).Err()
			case ctx.Err() != nil:
				return statusWithReason(codes.Unavailable, ReasonShuttingDown,
					fmt.Sprintf("the sidecar is shutting down; resume with after_sequence=%d", sub.Cursor()), resume)
			}
			return toStatus(err)
		}
		if types != nil && !types[ev.Type] {
			continue
		}
		if caller != nil && !caller.AllowsProvider(ev.Connection.Provider) {
			continue
		}
		if err := stream.Send(&tvv1.WatchEventsResponse{Event: eventProto(ev)}); err != nil {
			return err
		}
	}
}

// eventProto describes ev; its connection carries no token material.
func eventProto(ev vault.Event) *tvv1.Event {
	return &tvv1.Event{
		EventId:            ev.ID,
		Type:               ev.Type,
		Sequence:           ev.Sequence,
		ConnectionSequence: ev.ConnectionSequence,
		Time:               timestamppb.New(ev.Time),
		Connection:         connectionProto(ev.Connection),
		Reason:             ev.Reason,
		Imported:           ev.Imported,
	}
}

// webhookCollector exports webhook delivery, read at scrape time:
//
//	tokenvault_webhook_deliveries_total{endpoint,outcome}  attempts: delivered, failed, network_error, blocked, gone
//	tokenvault_webhook_backlog{endpoint}                   events written after the endpoint's cursor (0 where not delivering)
//	tokenvault_webhook_disabled{endpoint}                  1 if the endpoint is disabled (410 Gone, or failing too long)
//	tokenvault_webhook_delivering{endpoint}                1 if this replica delivers the endpoint now (replicas take turns)
//
// endpoint is the configured webhook name, never its URL.
type webhookCollector struct{ w *webhook.Deliverer }

var (
	webhookDeliveriesDesc = prometheus.NewDesc("tokenvault_webhook_deliveries_total",
		"Webhook delivery attempts, by endpoint name and outcome (delivered, failed, network_error, blocked, gone).",
		[]string{"endpoint", "outcome"}, nil)
	webhookBacklogDesc = prometheus.NewDesc("tokenvault_webhook_backlog",
		"Events written after the endpoint's delivery cursor: not yet delivered.",
		[]string{"endpoint"}, nil)
	webhookDisabledDesc = prometheus.NewDesc("tokenvault_webhook_disabled",
		"1 if the endpoint is disabled (it answered 410 Gone, or failed for too long).",
		[]string{"endpoint"}, nil)
	webhookDeliveringDesc = prometheus.NewDesc("tokenvault_webhook_delivering",
		"1 if this replica delivers to the endpoint now: replicas sharing etcd take turns, one at a time.",
		[]string{"endpoint"}, nil)
)

func (c webhookCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- webhookDeliveriesDesc
	ch <- webhookBacklogDesc
	ch <- webhookDisabledDesc
	ch <- webhookDeliveringDesc
}

func (c webhookCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.w.Stats() {
		for _, o := range webhook.Outcomes {
			ch <- prometheus.MustNewConstMetric(webhookDeliveriesDesc, prometheus.CounterValue, float64(s.Attempts[o]), s.Name, o)
		}
		ch <- prometheus.MustNewConstMetric(webhookBacklogDesc, prometheus.GaugeValue, float64(s.Backlog), s.Name)
		disabled := 0.0
		if s.Disabled {
			disabled = 1
		}
		ch <- prometheus.MustNewConstMetric(webhookDisabledDesc, prometheus.GaugeValue, disabled, s.Name)
		delivering := 0.0
		if s.Delivering {
			delivering = 1
		}
		ch <- prometheus.MustNewConstMetric(webhookDeliveringDesc, prometheus.GaugeValue, delivering, s.Name)
	}
}
