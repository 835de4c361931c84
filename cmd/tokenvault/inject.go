package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/tokenvault/tokenvault/cmd/tokenvault/internal/inject"
)

// injectCmd runs the mutating admission webhook that adds the sidecar to
// annotated pods (deploy/kubernetes/injector holds its manifests).
func injectCmd(ctx context.Context, args []string, env func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("inject", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg inject.Config
	opts := inject.Options{}
	fs.StringVar(&opts.Addr, "addr", "0.0.0.0:8443", "HTTPS listen address (the API server calls it through a Service)")
	fs.StringVar(&opts.CertFile, "tls-cert-file", "", "the serving certificate (PEM), read again when it changes")
	fs.StringVar(&opts.KeyFile, "tls-key-file", "", "the serving certificate's key (PEM)")
	fs.DurationVar(&opts.ReloadInterval, "tls-reload-interval", 30*time.Second, "how often to look for a renewed certificate")
	fs.StringVar(&cfg.Image, "image", "", "the sidecar's image (a pod may name another with "+inject.AnnotationImage+")")
	fs.StringVar(&cfg.ConfigMap, "config-map", "", "ConfigMap of pods that do not set "+inject.AnnotationConfigMap+" (default: the annotation is required)")
	fs.StringVar(&cfg.MasterKeySecret, "master-key-secret", "", "Secret of pods that do not set "+inject.AnnotationMasterKeySecret+" (default: the annotation is required)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	readyFile := fs.String("ready-file", "", "write the listening address as JSON to this file once serving")
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "inject takes no arguments, got %q\n", fs.Args())
		return errUsage
	}
	if opts.CertFile == "" || opts.KeyFile == "" {
		return fmt.Errorf("--tls-cert-file and --tls-key-file are required: the API server calls webhooks over HTTPS only")
	}
	if cfg.Image == "" {
		return fmt.Errorf("--image is required: the sidecar's image, e.g. tokenvault/tokenvault:%s", buildVersion())
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	var readyErr error
	opts.Ready = func(addr string) {
		if *readyFile != "" {
			b, _ := json.Marshal(map[string]string{"addr": addr})
			readyErr = os.WriteFile(*readyFile, b, 0o600)
		}
	}
	err := inject.Serve(ctx, cfg, opts, log)
	if readyErr != nil {
		return fmt.Errorf("ready file: %w", readyErr)
	}
	return err
}
