//! The demo: the upstream application it deploys ([`upstream`], `cutover demo-upstream`) and
//! its no-Docker twin ([`twin`], `cutover demo`). The Docker Compose demo (`docker-compose.yml`)
//! runs the same upstreams in containers.

pub mod twin;
pub mod upstream;
