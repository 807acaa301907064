// Command rls is the sidemesh global rate-limit service (envoy.service.ratelimit.v3).
package main

import (
	"context"

	"github.com/spf13/pflag"

	"github.com/sidemesh/sidemesh/internal/app"
)

func main() {
	app.Main(app.Spec{
		Name:      "rls",
		EnvPrefix: "RLS",
		Summary:   "sidemesh global rate-limit service (envoy.service.ratelimit.v3) (skeleton: serves only its admin endpoints so far)",
		AdminAddr: "127.0.0.1:9081",
		Flags:     func(fs *pflag.FlagSet) {},
		Run: func(ctx context.Context, env *app.Env) error {
			return env.Serve()
		},
	})
}
