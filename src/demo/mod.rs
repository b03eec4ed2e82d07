//! The demo: the upstream application it deploys ([`upstream`], `cutover demo-upstream`).
//! The Docker Compose demo (`docker-compose.yml`) runs it in containers.

pub mod upstream;
