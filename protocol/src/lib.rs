//! The shim-agent API: protobuf definitions compiled for ttrpc, shared by the shim and the agent.
