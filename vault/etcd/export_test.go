package etcd

// PageScans makes s read Scan in pages, as it does against a server that
// cannot stream a range.
func (s *Store) PageScans() { s.noStream.Store(true) }
