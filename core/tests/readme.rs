//! The README's examples that are not doctests: its region file parses and means what the
//! README says it means.

use meridian::region::RegionMap;

/// The README's `regions.toml` block.
fn readme_region_file() -> &'static str {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```toml\n# regions.toml\n")
        .expect("the README shows a region file in a ```toml block starting `# regions.toml`");
    let body = &readme[start + "```toml\n".len()..];
    &body[..body.find("```").expect("the block is closed")]
}

#[test]
fn the_readme_region_file_parses_with_every_field_it_shows() {
    let text = readme_region_file();
    let map = RegionMap::from_toml_str(text).expect("the README's region file parses");
    let names: Vec<&str> = map.regions.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["eu-west", "us-east"]);
    let eu = &map.regions[0];
    assert_eq!(eu.servers.len(), 2);
    assert_eq!(eu.servers[1].server_name, "eu-west-2.example.com");
    let first: std::net::SocketAddr = "10.0.0.1:7000".parse().unwrap();
    assert_eq!(eu.servers[0].addr, first);
    assert_eq!(eu.proxies.len(), 1);
    assert_eq!(eu.proxies[0].server_name, "proxy.eu-west.example.com");
    // The README says a region's server_name is the name of every server in it, that
    // pinning is a region setting, and that an address may be a host name.
    let us = &map.regions[1];
    assert!(us
        .servers
        .iter()
        .all(|s| s.server_name == "us-east.example.com"));
    assert!(us.pin_cert_sha256);
    assert!(us.servers[0].cert_sha256.is_some());
    assert_eq!(us.servers[1].addr.host(), "us-east-2.example.com");
    assert!(us.proxies.is_empty());

    #[cfg(feature = "etcd")]
    {
        use meridian::region::EtcdConfig;
        let etcd = EtcdConfig::from_toml_str(text)
            .expect("the [etcd] table parses")
            .expect("the README's file has an [etcd] table");
        assert_eq!(etcd.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(etcd.prefix, EtcdConfig::DEFAULT_PREFIX);
        assert_eq!(etcd.lease_ttl, std::time::Duration::from_secs(5));
    }
}
